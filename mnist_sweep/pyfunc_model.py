"""The code MLflow runs to load a logged mnist_sweep model (see serving.MODEL_CODE)."""

from mlflow.models import set_model

from mnist_sweep.serving import DigitClassifier

set_model(DigitClassifier())
