"""One fixture composes the real config from conf/ and shrinks it for fast, offline tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mnist_sweep.config import DatasetName, register_schema
from mnist_sweep.data import DATASETS, DataFiles, torchvision_dataset
from mnist_sweep.sweep import plugin

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
# Where data=fashion_mnist reads from by default; CI installs Debian's package (.ci/run).
FASHION_SOURCE = Path(DATASETS[DatasetName.fashion_mnist].source)
needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_SOURCE.is_dir(),
    reason=f"Fashion-MNIST is absent: {FASHION_SOURCE} comes from Debian's dataset-fashion-mnist",
)


@pytest.fixture(autouse=True)
def no_inherited_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without MLFLOW_TRACKING_URI: run.py, predict, evaluate and their
    subprocesses read it (mnist_sweep/tracking.py), and mlflow.set_tracking_uri in an earlier
    test exports it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One extracted copy of MNIST for the whole session."""
    return tmp_path_factory.mktemp("data")


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The composed config of `python run.py <overrides>`, without Hydra's own node."""
    register_schema()
    plugin.register()
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose(config_name="config", overrides=overrides or [])


def small_overrides(data_root: Path, tmp_path: Path) -> list[str]:
    """A run that takes about a second: a training subset, one epoch, a private MLflow store."""
    return [
        f"data.root={data_root}",
        "data.train_subset=2000",
        "data.batch_size=100",
        "trainer.epochs=1",
        "model.hidden_sizes=[64,32]",
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
    ]


@pytest.fixture
def small_cfg(data_root: Path, tmp_path: Path) -> DictConfig:
    return compose_config(small_overrides(data_root, tmp_path))


@pytest.fixture(scope="session")
def trained_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one small run, trained once per session: out/model.pt and the MLflow
    store mlflow.db that holds the run and its logged model (about 95% test accuracy)."""
    from mnist_sweep import experiment

    folder = tmp_path_factory.mktemp("trained")
    better = {"data.train_subset": "10000", "trainer.epochs": "2"}
    overrides = [item for item in small_overrides(data_root, folder)
                 if item.split("=")[0] not in better]  # fmt: skip
    cfg = compose_config([*overrides, *(f"{key}={value}" for key, value in better.items())])
    experiment.run(cfg, folder / "out")
    return folder


@pytest.fixture(scope="session")
def test_digits(data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's test images (uint8, N x 28 x 28) and labels."""
    test = torchvision_dataset(DataFiles(str(data_root)), train=False)
    return test.data.numpy(), test.targets.numpy()


@pytest.fixture(scope="session")
def photos() -> ModuleType:
    """benchmarks/photos.py, the generator of realistic pictures. One copy serves the tests and
    the benchmark; benchmarks/ is a folder of scripts, not a package, so it is loaded by path."""
    spec = importlib.util.spec_from_file_location("photos", REPO / "benchmarks" / "photos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
