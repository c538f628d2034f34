"""Hydra-configured MNIST classifier sweeps with MLflow tracking."""

from mnist_sweep.checkpoints import load_model

__all__ = ["load_model"]
