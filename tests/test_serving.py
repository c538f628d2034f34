"""The run's MLflow Model: pyfunc round trip, the champion from the registry, and
`mlflow models serve` answering real HTTP requests."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

import mnist_sweep
from mnist_sweep.config import SweepConfig
from mnist_sweep.data import DataFiles, torchvision_dataset
from mnist_sweep.serving import SIGNATURE, invoke, served
from mnist_sweep.sweep.keep import keep_best

CHAMPION = "models:/mnist_sweep_test@champion"


@pytest.fixture(scope="module")
def store(trained_run: Path) -> tuple[mlflow.MlflowClient, mlflow.entities.Run, str]:
    """The trained run's store with its model kept and registered as the champion."""
    uri = f"sqlite:///{trained_run}/mlflow.db"
    mlflow.set_tracking_uri(uri)  # models:/ URIs resolve in this store
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("mnist_sweep").experiment_id
    [run] = client.search_runs([experiment])
    sweep = SweepConfig(min_test_accuracy=0.5, registered_model="mnist_sweep_test",
                        alias="champion")  # fmt: skip
    assert keep_best(client, [run], sweep, trained_run / "best") == run
    return client, run, uri


@pytest.fixture(scope="module")
def images(data_root: Path) -> np.ndarray:
    """200 MNIST test digits as the model's input: float32 (N, 1, 28, 28) in [0, 1]."""
    test = torchvision_dataset(DataFiles(str(data_root)), train=False)
    return (test.data[:200].unsqueeze(1).float() / 255).numpy()


def checkpoint_probabilities(trained_run: Path, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return mnist_sweep.load_model(trained_run / "out" / "model.pt")(torch.from_numpy(images))


def test_the_logged_model_has_its_signature_input_example_and_requirements(store) -> None:
    client, run, _ = store
    [logged] = client.search_logged_models([run.info.experiment_id])
    info = mlflow.models.get_model_info(logged.model_uri)
    assert info.signature == SIGNATURE
    assert info.saved_input_example_info["type"] == "ndarray"
    assert info.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    requirements = mlflow.pyfunc.get_model_dependencies(logged.model_uri)
    assert any(line.startswith("mnist_sweep==") for line in Path(requirements).read_text().split())


def test_the_champion_is_the_logged_model_and_predicts_like_load_model(
    store, trained_run: Path, images
) -> None:
    client, run, _ = store
    version = client.get_model_version_by_alias("mnist_sweep_test", "champion")
    [logged] = client.search_logged_models([run.info.experiment_id])
    assert (version.run_id, version.source) == (run.info.run_id, logged.model_uri)
    probabilities = mlflow.pyfunc.load_model(CHAMPION).predict(images)
    assert probabilities.shape == (200, 10) and probabilities.dtype == np.float32
    torch.testing.assert_close(
        torch.from_numpy(probabilities), checkpoint_probabilities(trained_run, images)
    )
    kept = mnist_sweep.load_model(trained_run / "best" / "model.pt")
    assert kept.net.hparams == mnist_sweep.load_model(trained_run / "out" / "model.pt").net.hparams


def test_mlflow_models_serve_answers_with_the_same_digits(
    store, trained_run: Path, images, tmp_path: Path
) -> None:
    _, _, tracking_uri = store
    with served(CHAMPION, tracking_uri, tmp_path / "serve.log") as url:
        status, answer = invoke(url, {"inputs": images[:50].tolist()})
        bad_status, bad_answer = invoke(url, {"inputs": [[1.0, 2.0]]})
    assert status == 200
    predictions = np.array(answer["predictions"])
    assert predictions.shape == (50, 10)
    expected = checkpoint_probabilities(trained_run, images[:50])
    assert (predictions.argmax(1) == expected.argmax(1).numpy()).all()
    np.testing.assert_allclose(predictions, expected.numpy(), atol=1e-6)
    assert bad_status == 400 and "shape" in bad_answer["message"].lower()
