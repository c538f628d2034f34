"""The run's MLflow Model: pyfunc round trip, the champion from the registry, and
`mlflow models serve` answering real HTTP requests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import mnist_sweep
from mnist_sweep import predict
from mnist_sweep.checkpoints import FORMAT, CheckpointError
from mnist_sweep.config import SweepConfig
from mnist_sweep.data import DataFiles, torchvision_dataset
from mnist_sweep.serving import (
    CHECKPOINT_IN_MODEL,
    LOADER_MODULE,
    SIGNATURE,
    check_mlmodel,
    download_checkpoint,
    log_pyfunc,
)
from mnist_sweep.sweep.keep import keep_best
from mnist_sweep.tracking import STORE_ENVIRONMENT, use_store

from tests.support import invoke, served

CHAMPION = "models:/mnist_sweep_test@champion"
# What MLflow runs to load the model: a module of the installed package, no code from the store.
PYFUNC = {"loader_module": LOADER_MODULE, "code": None, "data": CHECKPOINT_IN_MODEL}


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


@pytest.mark.slow
def test_the_logged_model_has_its_signature_input_example_and_requirements(store) -> None:
    client, run, _ = store
    [logged] = client.search_logged_models([run.info.experiment_id])
    info = mlflow.models.get_model_info(logged.model_uri)
    assert info.signature == SIGNATURE
    assert info.saved_input_example_info["type"] == "ndarray"
    assert list(info.flavors) == ["python_function"]
    assert info.flavors["python_function"].items() >= PYFUNC.items()
    requirements = mlflow.pyfunc.get_model_dependencies(logged.model_uri)
    assert any(line.startswith("mnist_sweep==") for line in Path(requirements).read_text().split())


@pytest.mark.slow
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


def test_a_models_uri_is_looked_up_by_the_store_rule_not_in_mlflows_global_store(
    store, tmp_path: Path, monkeypatch
) -> None:
    _, _, uri = store
    monkeypatch.setenv(STORE_ENVIRONMENT, uri)  # as `mlflow models serve` would read it
    previous = mlflow.get_tracking_uri()
    use_store(f"sqlite:///{tmp_path}/elsewhere.db")
    try:
        path, version = download_checkpoint(CHAMPION, tmp_path)
    finally:
        use_store(previous)
    assert path.name == "model.pt" and str(version) == "1"
    assert mnist_sweep.load_model(path).net.hparams


# Requests the served model refuses with HTTP 400, and a word its message must hold. JSON has
# no NaN or Infinity, but clients send them (Python's json.dumps does) and MLflow reads them;
# null and 1e300 reach the model as NaN and infinity (float32).
BAD_INPUTS = {
    "nan": (float("nan"), "nan"),
    "null": (None, "nan"),
    "infinity": (float("inf"), "infinite"),
    "1e300": (1e300, "infinite"),
    "255": (255.0, "[0, 1]"),
    "-1e30": (-1e30, "[0, 1]"),
    "string": ("abc", "abc"),
}


def image_with(value: object, images: np.ndarray) -> list:
    """The first test image as JSON lists, one pixel of it replaced by `value`."""
    image = images[:1].tolist()
    image[0][0][14][14] = value
    return image


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_same_digits_and_refuses_bad_input(
    store, trained_run: Path, images, tmp_path: Path
) -> None:
    _, _, tracking_uri = store
    with served(CHAMPION, tracking_uri, tmp_path / "serve.log") as url:  # one start: slow
        status, answer = invoke(url, {"inputs": images[:50].tolist()})
        bad_shape = invoke(url, {"inputs": [[1.0, 2.0]]})
        bad = {case: invoke(url, {"inputs": image_with(value, images)})
               for case, (value, _) in BAD_INPUTS.items()}  # fmt: skip
        edges = invoke(url, {"inputs": image_with(1.0005, images) + image_with(-0.0005, images)})
        boolean = invoke(url, {"inputs": image_with(True, images)})
    assert status == 200
    predictions = np.array(answer["predictions"])
    assert predictions.shape == (50, 10)
    expected = checkpoint_probabilities(trained_run, images[:50])
    assert (predictions.argmax(1) == expected.argmax(1).numpy()).all()
    np.testing.assert_allclose(predictions, expected.numpy(), atol=1e-6)
    assert bad_shape[0] == 400 and "shape" in bad_shape[1]["message"].lower()
    for case, (_, word) in BAD_INPUTS.items():
        assert bad[case][0] == 400, (case, bad[case])
        assert word in bad[case][1]["message"].lower(), (case, bad[case][1]["message"][-300:])
    assert edges[0] == 200  # within serving.TOLERANCE of [0, 1]
    # MLflow's parser casts each value to the signature's float32 before the model sees it, so
    # a boolean arrives as 1.0 (README, "As a web service"): answered like the image it makes.
    with_one = np.asarray(image_with(1.0, images), np.float32)
    expected = checkpoint_probabilities(trained_run, with_one).numpy()
    np.testing.assert_allclose(boolean[1]["predictions"], expected, atol=1e-6)


# Code an attacker with write access to the artifact store plants: it leaves a marker if run.
ATTACK = """import pathlib, types
pathlib.Path({marker!r}).touch()
_load_pyfunc = lambda data_path: types.SimpleNamespace(predict=print)
"""


@pytest.fixture
def logged(trained_run: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The trained model logged as a run logs it, in a store of its own (MLflow's URI points at
    it meanwhile): its models:/ URI and its folder in the artifact store."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    artifacts = (tmp_path / "artifacts").as_uri()
    with mlflow.start_run(experiment_id=mlflow.create_experiment("tamper", artifacts)):
        info = log_pyfunc(trained_run / "out" / "model.pt")
    location = mlflow.MlflowClient().get_logged_model(info.model_id).artifact_location
    yield info.model_uri, Path(urlparse(location).path)
    mlflow.set_tracking_uri(previous)


def predict_main(model: str, images: np.ndarray, tmp_path: Path, capsys) -> tuple[int, str]:
    """`predict --model model` on one test digit: the exit status and stderr."""
    Image.fromarray((images[0, 0] * 255).astype(np.uint8)).save(tmp_path / "digit.png")
    code = predict.main(["--model", model, str(tmp_path / "digit.png")])
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_a_model_whose_mlmodel_names_other_code_is_refused_and_runs_nothing(
    logged, images, tmp_path: Path, capsys, monkeypatch
) -> None:
    uri, folder = logged
    marker = tmp_path / "the attacker ran"
    (folder / "code").mkdir()
    (folder / "code" / "planted_loader.py").write_text(ATTACK.format(marker=str(marker)))
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"].update(loader_module="planted_loader", code="code")
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    code, err = predict_main(uri, images, tmp_path, capsys)
    assert code == 2 and "refused" in err and "'planted_loader'" in err and "'code'" in err
    assert not marker.exists()
    # What remains: MLflow's own loader (and so `mlflow models serve`) trusts MLmodel.
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        mlflow.pyfunc.load_model(uri)
    finally:
        sys.modules.pop("planted_loader", None)
    assert marker.exists()


@pytest.mark.slow
def test_a_model_pt_replaced_by_a_pickle_with_code_is_refused_and_runs_nothing(
    logged, images, tmp_path: Path, capsys
) -> None:
    uri, folder = logged
    marker = tmp_path / "the attacker ran"
    torch.save({"format": FORMAT, "weights": Planted(marker)}, folder / CHECKPOINT_IN_MODEL)
    torch.load(folder / CHECKPOINT_IN_MODEL, weights_only=False)  # the payload works...
    assert marker.exists()
    marker.unlink()
    code, err = predict_main(uri, images, tmp_path, capsys)
    assert code == 2 and "not a readable torch checkpoint" in err
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        mlflow.pyfunc.load_model(uri)  # our loader_module reads it with weights_only too
    assert not marker.exists()


@pytest.mark.slow
def test_python_files_dropped_beside_the_model_are_never_imported(
    logged, images, tmp_path: Path, capsys
) -> None:
    uri, folder = logged
    marker = tmp_path / "the attacker ran"
    for planted in ("sitecustomize.py", "data/__init__.py", "mnist_sweep/serving.py"):
        (folder / planted).parent.mkdir(exist_ok=True)
        (folder / planted).write_text(ATTACK.format(marker=str(marker)))
    assert mlflow.pyfunc.load_model(uri).predict(images[:1]).shape == (1, 10)
    code, err = predict_main(uri, images, tmp_path, capsys)
    assert code == 0 and err.startswith(f"model: {uri}")
    assert not marker.exists()


OURS_AS_WRITTEN = {"flavors": {"python_function": {**PYFUNC, "python_version": "3.11.7"}}}


@pytest.mark.parametrize(
    "mlmodel",
    ["flavors: [", "- a list", "", "flavors: {python_function: 3}",
     yaml.safe_dump({"flavors": {**OURS_AS_WRITTEN["flavors"], "pytorch": {"pickled": True}}})],
)  # fmt: skip
def test_an_mlmodel_unlike_what_log_pyfunc_writes_is_refused(mlmodel: str, tmp_path) -> None:
    (tmp_path / "MLmodel").write_text(yaml.safe_dump(OURS_AS_WRITTEN))
    check_mlmodel(tmp_path / "MLmodel")
    (tmp_path / "MLmodel").write_text(mlmodel)
    with pytest.raises(ValueError, match=r"^refused: its MLmodel"):
        check_mlmodel(tmp_path / "MLmodel")


class Planted:
    """Pickled, it calls Path.touch(marker) when unpickled: code that torch.load would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)
