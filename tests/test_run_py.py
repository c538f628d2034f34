"""`python run.py` through Hydra, as a user runs it, in a temporary directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow

from conftest import small_overrides

RUN_PY = Path(__file__).resolve().parents[1] / "run.py"


def run_py(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RUN_PY), *overrides],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_run_py_trains_saves_and_tracks(data_root: Path, tmp_path: Path) -> None:
    overrides = [o for o in small_overrides(data_root, tmp_path) if "tracking_uri" not in o]
    done = run_py(tmp_path, *overrides, "hydra.run.dir=out")
    assert done.returncode == 0, done.stderr
    written = {path.name for path in (tmp_path / "out").iterdir()}
    assert written >= {"model.pt", "config.yaml", "show5.png"}
    # The default store is beside where run.py was started, whatever Hydra's working directory.
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("mnist_sweep").experiment_id])
    assert run.data.metrics["test_accuracy"] > 0.5


def test_bad_override_fails_at_start_naming_the_key(data_root: Path, tmp_path: Path) -> None:
    done = run_py(tmp_path, f"data.root={data_root}", "model.hidden_sizes=[256]")
    assert done.returncode != 0
    assert "model.hidden_sizes" in done.stderr and "two hidden layers" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()
