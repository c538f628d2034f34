"""The run's model as an MLflow Model: model.pt as data, loaded by this package's own code."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
import yaml
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from mnist_sweep import tracking
from mnist_sweep.checkpoints import load_model
from mnist_sweep.models import IMAGE_SIDE, NUM_CLASSES

# MLflow loads the model by importing this module of the installed package and calling its
# _load_pyfunc on model.pt (weights_only): the store holds data only, no code and no pickle.
LOADER_MODULE = __name__
CHECKPOINT_IN_MODEL = "data/model.pt"  # where MLflow puts data_path=model.pt
PYFUNC = "python_function"
# What MLmodel says of a model that log_pyfunc logged: anything else (a `code` folder, another
# loader_module or flavor) is a model someone else wrote, and refused by check_mlmodel.
OURS = {
    "flavors": [PYFUNC],
    "loader_module": LOADER_MODULE,
    "code": None,
    "data": CHECKPOINT_IN_MODEL,
}
SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, IMAGE_SIDE, IMAGE_SIDE))]),
    outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, NUM_CLASSES))]),
)
# How far outside [0, 1] a pixel may stray (float rounding of x / 255 and the like).
TOLERANCE = 1e-3


class DigitClassifier:
    """float32 images in [0, 1] of shape (N, 1, 28, 28) -> (N, 10) class probabilities."""

    def __init__(self, classifier: torch.nn.Module) -> None:
        self.classifier = classifier

    def predict(self, model_input: np.ndarray, params: Any = None) -> np.ndarray:
        images = checked_images(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            return self.classifier(torch.from_numpy(images)).numpy()


def _load_pyfunc(data_path: str) -> DigitClassifier:
    """MLflow's entry point (loader_module): the classifier of the model's model.pt."""
    return DigitClassifier(load_model(data_path))


def checked_images(images: np.ndarray) -> np.ndarray:
    """`images` if every value is a number in [0, 1] (within TOLERANCE); an MlflowException
    otherwise, which the scoring server answers with HTTP 400 and its message."""
    problem = None
    if np.isnan(images).any():
        problem = "NaN (or null) values"
    elif np.isinf(images).any():
        problem = "infinite values (or values beyond float32's range, about 3.4e38)"
    elif images.size and (images.min() < -TOLERANCE or images.max() > 1 + TOLERANCE):
        problem = f"values from {images.min():.6g} to {images.max():.6g}"
    if problem is not None:
        raise mlflow.exceptions.MlflowException.invalid_parameter_value(
            f"images must be numbers in [0, 1] (white digit on black, pixel / 255); got {problem}"
        )
    return images


def requirements() -> list[str]:
    """What the loading environment needs: this package (not on PyPI: install it, then serve
    with --env-manager local), the torch it was trained with, and MLflow."""
    return [f"{name}=={version(name)}" for name in ("mnist_sweep", "torch", "mlflow")]


def log_pyfunc(checkpoint: Path, name: str = "model") -> mlflow.models.model.ModelInfo:
    """Log `checkpoint` as the active run's MLflow Model, with signature and input example."""
    example = np.zeros((1, 1, IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    return mlflow.pyfunc.log_model(
        name=name,
        loader_module=LOADER_MODULE,
        data_path=str(checkpoint),
        signature=SIGNATURE,
        input_example=example,
        pip_requirements=requirements(),
    )


def download_checkpoint(
    model_uri: str, folder: Path, tracking_uri: str | None = None
) -> tuple[Path, str | None]:
    """model.pt of the logged model `model_uri` in the store `tracking_uri` (None: by
    tracking.store's rule), downloaded to `folder` once its MLmodel passes check_mlmodel
    (nothing else of the model is fetched), and its registry version (None for a URI that
    names no version)."""
    tracking_uri = tracking.store(tracking_uri)
    location, version = located(model_uri, tracking_uri)

    def fetch(name: str) -> Path:
        return Path(mlflow.artifacts.download_artifacts(
            f"{location.rstrip('/')}/{name}", dst_path=str(folder / Path(name).parent),
            tracking_uri=tracking_uri,
        ))  # fmt: skip

    check_mlmodel(fetch("MLmodel"))
    return fetch(CHECKPOINT_IN_MODEL), version


def check_mlmodel(path: Path) -> None:
    """ValueError unless the MLmodel file at `path` says what log_pyfunc writes (OURS)."""
    try:
        flavors = dict(yaml.safe_load(path.read_text())["flavors"])
        pyfunc = dict(flavors[PYFUNC])
        found = {"flavors": sorted(flavors), **{key: pyfunc.get(key) for key in list(OURS)[1:]}}
    except (yaml.YAMLError, LookupError, TypeError, ValueError) as error:
        raise ValueError(
            f"refused: its MLmodel is not one mnist_sweep writes ({error!r})"
        ) from error
    wrong = [f"{key} {value!r}" for key, value in found.items() if value != OURS[key]]
    if wrong:
        raise ValueError(
            f"refused: its MLmodel has {', '.join(wrong)}, where mnist_sweep writes "
            + ", ".join(f"{key} {value!r}" for key, value in OURS.items())
            + "; loading it with MLflow could run code from the store"
        )


def located(model_uri: str, tracking_uri: str) -> tuple[str, str | None]:
    """Where the files of `model_uri` are, a registry alias resolved to the version it names now
    (so that the version downloaded is the one reported), and that version."""
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    if not model_uri.startswith("models:/"):
        return model_uri, None
    # MLflow's download of a models:/ URI looks it up in the global store, not `tracking_uri`.
    client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
    found = get_model_name_and_version(client, model_uri)
    if len(found) == 1:  # models:/<model id>: a logged model, not a registry version
        return client.get_logged_model(found[0]).artifact_location, None
    name, version = found
    return client.get_model_version_download_uri(name, version), version
