"""Helpers of the tests that run `python run.py -m` in a temporary folder."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
from optuna.trial import TrialState

RUN_PY = Path(__file__).resolve().parents[1] / "run.py"


def sweep_command(data_root: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(RUN_PY), "-m", f"data.root={data_root}",
            "data.train_subset=3000", "trainer.epochs=1", *overrides]  # fmt: skip


def run_sweep(folder: Path, data_root: Path, *overrides: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        sweep_command(data_root, *overrides), cwd=folder, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def study(folder: Path, name: str = "mlp") -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "optuna_journal.log"))
    )
    return optuna.load_study(study_name=name, storage=storage)


def states(folder: Path) -> list[TrialState]:
    return [trial.state for trial in study(folder).trials]


def interrupt_mid_trial(
    data_root: Path,
    folder: Path,
    overrides: list[str],
    stop: signal.Signals,
    ended: TrialState = TrialState.COMPLETE,
) -> list[TrialState]:
    """Start a sweep, send it `stop` once a trial has `ended` and a later one is running, and
    return the trial states it leaves."""
    process = subprocess.Popen(
        sweep_command(data_root, *overrides), cwd=folder,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with contextlib.suppress(KeyError):  # the journal file exists before the study does
            seen = states(folder)
            if ended in seen and seen[-1] is TrialState.RUNNING:
                break
        time.sleep(0.02)
    os.kill(process.pid, stop)
    process.wait(timeout=60)
    return states(folder)


def mlflow_runs(folder: Path, role: str):
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist_sweep").experiment_id
    return client, client.search_runs([experiment], f"tags.`mnist_sweep.role` = '{role}'")
