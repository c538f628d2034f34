"""The saved model: one torch.save'd dict from which the classifier is rebuilt alone."""

from __future__ import annotations

import pickle
import zipfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from mnist_sweep.models import Classifier, Network, rebuild

FORMAT = "mnist_sweep.checkpoint/1"


class CheckpointError(ValueError):
    """A file that is missing, damaged or not a mnist_sweep checkpoint."""


def save_checkpoint(
    path: Path,
    model: Network,
    *,
    normalization: dict[str, float],
    class_names: list[str],
    metrics: dict[str, float],
    config: dict[str, Any],
    history: list[dict[str, float]] | None = None,
    run_id: str | None = None,
) -> Path:
    """Write everything `load_model` needs, plus the run's config, metrics, per-epoch history,
    MLflow run id and library versions."""
    checkpoint = {
        "format": FORMAT,
        "state_dict": {key: value.cpu() for key, value in model.state_dict().items()},
        "model_config": model.hparams,
        "normalization": normalization,
        "class_names": class_names,
        "metrics": metrics,
        "config": config,
        "history": history or [],
        "run_id": run_id,
        "versions": {name: version(name) for name in ("torch", "torchvision", "mnist_sweep")},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """The checkpoint dict, loaded with weights_only=True; CheckpointError if it is not ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as error:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({error})") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a mnist_sweep checkpoint (expected format {FORMAT})")
    return checkpoint


def load_model(path: Path | str) -> Classifier:
    """The saved classifier, in eval mode: (N, 1, 28, 28) images in [0, 1] -> (N, 10) probs."""
    return classifier_from(read_checkpoint(path))


def classifier_from(checkpoint: dict[str, Any]) -> Classifier:
    """The classifier of a checkpoint dict that read_checkpoint returned, in eval mode."""
    net = rebuild(checkpoint["model_config"])
    net.load_state_dict(checkpoint["state_dict"])
    normalization = checkpoint["normalization"]
    return Classifier(net, normalization["mean"], normalization["std"]).eval()


def describe(checkpoint: dict[str, Any], where: str) -> str:
    """One line for the user: which model (`where` it came from) and its recorded test accuracy."""
    accuracy = checkpoint["metrics"].get("test_accuracy")
    recorded = "no test accuracy recorded" if accuracy is None else f"test accuracy {accuracy:.4f}"
    return f"model: {where}, {recorded}"
