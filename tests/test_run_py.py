"""`python run.py` through Hydra, as a user runs it, in a temporary directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.support import small_overrides

RUN_PY = Path(__file__).resolve().parents[1] / "run.py"
HEAVY = ("torch", "torchvision", "mlflow", "matplotlib", "optuna", "scipy")
# Runs run.py as `python run.py` would, then reports which heavy libraries it imported.
IMPORTS_OF_RUN_PY = f"""
import json, runpy, sys
sys.path.insert(0, {str(RUN_PY.parent)!r})
sys.argv = [{str(RUN_PY)!r}, *sys.argv[1:]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("imported:", json.dumps(sorted(set({HEAVY!r}) & set(sys.modules))), file=sys.stderr)
"""


def run_py(tmp_path: Path, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    # MLFLOW_TRACKING_URI too: mlflow.set_tracking_uri in this process exports it.
    ignored = ("HYDRA_FULL_ERROR", "MLFLOW_TRACKING_URI")
    environment = {k: v for k, v in os.environ.items() if k not in ignored} | env
    return subprocess.run(
        [sys.executable, str(RUN_PY), *overrides],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=environment,
    )  # fmt: skip


@pytest.mark.slow
def test_run_py_trains_saves_and_tracks_without_warnings(data_root: Path, tmp_path: Path) -> None:
    overrides = [o for o in small_overrides(data_root, tmp_path) if "tracking_uri" not in o]
    done = run_py(tmp_path, *overrides, "hydra.run.dir=out")
    assert done.returncode == 0, done.stderr
    written = {path.name for path in (tmp_path / "out").iterdir()}
    assert written >= {"model.pt", "config.yaml", "show5.png"}
    # The default store is beside where run.py was started, whatever Hydra's working directory.
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("mnist_sweep").experiment_id])
    assert run.data.metrics["test_accuracy"] > 0.5
    output = done.stdout + done.stderr
    assert "Warning" not in output and "WARNING" not in output, output
    assert "Validating input example" not in output  # MLflow's, past our console handler


def test_the_store_is_the_override_else_the_environments_else_mlflow_db_here(
    tmp_path: Path,
) -> None:
    def store(*overrides: str, **env: str) -> str:
        done = run_py(tmp_path, "--cfg", "job", "--resolve", "-p", "mlflow.tracking_uri",
                      *overrides, **env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert store() == f"sqlite:///{tmp_path}/mlflow.db"
    assert store(MLFLOW_TRACKING_URI="http://env:5000") == "http://env:5000"
    flag = "mlflow.tracking_uri=sqlite:///flag.db"
    assert store(flag, MLFLOW_TRACKING_URI="http://env:5000") == "sqlite:///flag.db"


def test_a_missing_optional_dataset_ends_the_run_in_one_line_naming_its_package(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "missing"
    done = run_py(tmp_path, "data=fashion_mnist", f"data.source_dir={missing}",
                  f"data.root={tmp_path}/data")  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Error in the config: data.source_dir={missing}: "
        f"{missing}/train-images-idx3-ubyte.gz does not exist (apt-get install "
        "dataset-fashion-mnist, or point data.source_dir at the four .gz files; or "
        "data.download=true to let torchvision fetch it)"
    ]
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run, FAILED or other


def test_a_sweep_leaves_the_launchers_per_trial_lines_out(tmp_path: Path) -> None:
    done = run_py(tmp_path, "-m", "hydra.sweeper.n_trials=1", "optimizer.lr=interval(-2.0, -1.0)")
    assert "Trial 0 failed" in done.stdout  # a trial ran, and failed at once
    assert "Launching 1 jobs" not in done.stdout and "#0 : " not in done.stdout


@pytest.mark.parametrize("arguments", [["--cfg", "job"], ["--help"], ["optimizer.lr=-1"]])
def test_config_commands_and_errors_never_import_torch_or_mlflow(
    tmp_path: Path, arguments: list[str]
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS_OF_RUN_PY, *arguments],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    [imported] = [line for line in done.stderr.splitlines() if line.startswith("imported:")]
    assert json.loads(imported.removeprefix("imported:")) == []
    if arguments[0] == "--cfg":
        assert done.returncode == 0 and "hidden_sizes:" in done.stdout


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("optimizer.lr=-1", "optimizer.lr: must be positive, got -1.0"),
        ("model.hidden_sizes=[256]", "model.hidden_sizes: an MLP needs at least two hidden layers"),
        ("trainer.device=tpu", "expected one of [auto, cpu, cuda, mps]"),
        ("optimizer=rmsprop", "Available options in 'optimizer'"),
        ("optimizer.lrr=0.1", "Key 'lrr' not in 'OptimizerConfig'. Did you mean: 'lr'?"),
    ],
)
def test_a_bad_value_ends_the_run_with_a_short_message_naming_the_key(
    tmp_path: Path, override: str, says: str
) -> None:
    done = run_py(tmp_path, override)
    assert done.returncode == 1
    assert says in done.stderr and override.split("=")[0] in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) <= 10, done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_hydra_full_error_shows_the_traceback(tmp_path: Path) -> None:
    done = run_py(tmp_path, "optimizer.lr=-1", HYDRA_FULL_ERROR="1")
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ConfigError" in done.stderr


@pytest.mark.slow
def test_a_bad_value_in_a_sweep_fails_its_trial_with_the_same_message(
    data_root: Path, tmp_path: Path
) -> None:
    done = run_py(tmp_path, "-m", f"data.root={data_root}", "hydra.sweeper.n_trials=1",
                  "optimizer.lr=interval(-2.0, -1.0)")  # fmt: skip
    assert done.returncode == 1
    assert "Trial 0 failed: optimizer.lr: must be positive, got -1." in done.stdout
    assert "Traceback" not in done.stderr
    assert "1 trials failed, more than max_failure_rate" in done.stderr


@pytest.mark.slow
def test_a_bad_value_stops_a_sweep_before_its_first_trial(tmp_path: Path) -> None:
    done = run_py(tmp_path, "-m", "optimizer.lr=-1")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "Error in the config: optimizer.lr: must be positive, got -1.0"
    )
    assert "Traceback" not in done.stderr and not (tmp_path / "multirun").exists()
