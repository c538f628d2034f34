"""Fixtures: one composes the real config from conf/ and shrinks it for fast, offline tests;
the servers start once per session. Plain helpers are in tests/support.py.

Tiers (markers, pyproject.toml): `server` tests start a real server or need root, `slow` ones
train for long or run sweeps, the rest are fast. The end of a run prints each tier's time.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig

from mnist_sweep.data import DataFiles, torchvision_dataset

from tests.support import (
    MlflowServer,
    Postgres,
    SlurmCluster,
    compose_config,
    small_overrides,
)

TIERS = ("fast", "slow", "server")


def tier(keywords) -> str:
    """A test's tier, from its markers: server before slow."""
    return next((name for name in ("server", "slow") if name in keywords), "fast")


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background of a script (`pytest &`, nohup) inherits SIGINT
    ignored and would pass that on to the sweeps its tests stop with Ctrl-C; a handler of its
    own lets them start with the default one."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The suite's time by tier: setup, call and teardown of the tests run in each."""
    seconds, tests = dict.fromkeys(TIERS, 0.0), {name: set() for name in TIERS}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                seconds[tier(report.keywords)] += report.duration
                tests[tier(report.keywords)].add(report.nodeid)
    terminalreporter.write_sep("-", "duration by tier")
    for name in TIERS:
        count, spent = len(tests[name]), seconds[name]
        terminalreporter.write_line(f"{name:>6}: {count:3d} tests, {spent:7.1f} s")


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


def started(server_class, *args):
    """A server of `server_class`, or the test fails with one line saying what is missing."""
    if why := server_class.missing():
        pytest.fail(why, pytrace=False)
    return server_class(*args)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = started(Postgres)
    yield server
    server.remove()


@pytest.fixture(scope="session")
def tracking_server(postgres: Postgres) -> Iterator[MlflowServer]:
    server = MlflowServer(postgres.create_database("mlflow"))
    yield server
    server.remove()


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    cluster = started(SlurmCluster)
    yield cluster
    cluster.remove()
