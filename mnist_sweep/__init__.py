"""Hydra-configured MNIST classifier sweeps with MLflow tracking."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mnist_sweep.checkpoints import load_model

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `run.py --help` and config errors never load torch.
    if name == "load_model":
        from mnist_sweep.checkpoints import load_model

        return load_model
    raise AttributeError(f"module 'mnist_sweep' has no attribute {name!r}")
