"""The run's model as an MLflow Model: a pyfunc over model.pt, logged without pickle."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from mnist_sweep.checkpoints import load_model
from mnist_sweep.models import IMAGE_SIDE, NUM_CLASSES

# MLflow runs this file to build the pyfunc ("models from code"), so loading the model
# unpickles nothing: the weights come from model.pt through load_model (weights_only).
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
CHECKPOINT = "checkpoint"
CHECKPOINT_IN_MODEL = "artifacts/model.pt"  # where MLflow puts artifacts={CHECKPOINT: model.pt}
SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, IMAGE_SIDE, IMAGE_SIDE))]),
    outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, NUM_CLASSES))]),
)


class DigitClassifier(mlflow.pyfunc.PythonModel):
    """float32 images in [0, 1] of shape (N, 1, 28, 28) -> (N, 10) class probabilities."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.classifier = load_model(context.artifacts[CHECKPOINT])

    def predict(self, context: Any, model_input: np.ndarray, params: Any = None) -> np.ndarray:
        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            return self.classifier(images).numpy()


def requirements() -> list[str]:
    """What the loading environment needs: this package (not on PyPI: install it, then serve
    with --env-manager local), the torch it was trained with, and MLflow."""
    return [f"{name}=={version(name)}" for name in ("mnist_sweep", "torch", "mlflow")]


def log_pyfunc(checkpoint: Path, name: str = "model") -> mlflow.models.model.ModelInfo:
    """Log `checkpoint` as the active run's MLflow Model, with signature and input example."""
    example = np.zeros((1, 1, IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(MODEL_CODE),
        artifacts={CHECKPOINT: str(checkpoint)},
        signature=SIGNATURE,
        input_example=example,
        pip_requirements=requirements(),
    )
