"""A sweep on real servers: per-trial overhead, recovery from a dead worker, SLURM workers.

    python -m benchmarks.scale_out            # as root: it starts PostgreSQL as `postgres`
                                              # and a single-node SLURM cluster

Starts the servers of tests/support.py (PostgreSQL, `mlflow server` on it, SLURM with
accounting) in temporary folders, then prints, in one run:
1. per-trial overhead, the embedded journal + SQLite against PostgreSQL + the tracking server:
   the same small sweep on each, alternated; a trial's overhead is the time from asking for it
   to telling its result less its training epoch (training images / train_samples_per_s):
   job set-up, MLflow logging, evaluation report, checkpoint; medians, and their ratio;
2. seconds from a worker's SIGKILL to its trial being failed, and to a replacement starting;
3. a 4-worker sweep as a SLURM job array on one study: trials, duplicates, wall time against
   one worker running the same number of trials without SLURM.
"""

from __future__ import annotations

import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import mlflow
import optuna
from optuna.trial import TrialState

from tests.support import RUN_PY, MlflowServer, Postgres, SlurmCluster

TRAIN = ["data.train_subset=2000", "trainer.epochs=1", "sweep.min_test_accuracy=0.5"]
TRIALS = 4
PSYCOPG = "postgresql+psycopg"


def command(*overrides: str) -> list[str]:
    return [sys.executable, str(RUN_PY), "-m", *TRAIN, *overrides]


def overhead_s(study: optuna.Study, tracking_uri: str, experiment: str) -> float:
    """Median over trials of the time from ask to tell less the training epoch."""
    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = {run.data.tags["mnist_sweep.trial_number"]: run for run in client.search_runs(
        [experiment_id], "tags.`mnist_sweep.role` = 'trial'")}  # fmt: skip
    return statistics.median(
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        - int(runs[str(trial.number)].data.params["data.train_subset"])
        / runs[str(trial.number)].data.metrics["train_samples_per_s"]
        for trial in study.trials
        if trial.state is TrialState.COMPLETE
    )


def sweep(overrides: list[str], folder: str) -> None:
    subprocess.run(command(*overrides), cwd=folder, check=True, capture_output=True)


def per_trial_overhead(postgres: Postgres, tracking: MlflowServer, repeats: int = 2) -> None:
    embedded, served = [], []
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            sweep([f"hydra.sweeper.n_trials={TRIALS}"], folder)
            journal = optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(f"{folder}/optuna_journal.log")
            )
            study = optuna.load_study(study_name="mlp", storage=journal)
            embedded.append(overhead_s(study, f"sqlite:///{folder}/mlflow.db", "mnist_sweep"))
        name = f"overhead{repeat}"
        with tempfile.TemporaryDirectory() as folder:
            sweep([f"hydra.sweeper.n_trials={TRIALS}", *servers(postgres, tracking, name)], folder)
            study = optuna.load_study(study_name=name, storage=postgres.url(name, PSYCOPG))
            served.append(overhead_s(study, tracking.url, name))
    journal, server = statistics.median(embedded), statistics.median(served)
    print(f"1. per-trial overhead (ask to tell less training; median of {repeats} x {TRIALS} "
          f"trials): journal + SQLite {journal:.2f} s, PostgreSQL + tracking server "
          f"{server:.2f} s: ratio {server / journal:.2f}")  # fmt: skip


def servers(postgres: Postgres, tracking: MlflowServer, name: str) -> list[str]:
    """Overrides that put sweep `name` in a new database and on the tracking server."""
    postgres.create_database(name)
    return [f"hydra.sweeper.storage={postgres.url(name)}", f"mlflow.tracking_uri={tracking.url}",
            f"hydra.sweeper.study_name={name}", f"mlflow.experiment_name={name}",
            f"sweep.registered_model={name}"]  # fmt: skip


def recovery(postgres: Postgres, tracking: MlflowServer, interval: int = 2, grace: int = 10):
    name = "recovery"
    overrides = [*servers(postgres, tracking, name), "hydra.sweeper.n_trials=4",
                 "trainer.epochs=3", f"hydra.sweeper.heartbeat_interval={interval}",
                 f"hydra.sweeper.grace_period={grace}"]  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        workers = [subprocess.Popen(command(*overrides), cwd=folder, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL) for _ in range(2)]  # fmt: skip
        owner = f"{socket.gethostname()}:{workers[0].pid}"
        victim = poll(
            lambda: next(
                (
                    t
                    for t in trials(postgres, name, TrialState.RUNNING)
                    if t.user_attrs.get("mnist_sweep.owner") == owner
                ),
                None,
            )
        )
        os.kill(workers[0].pid, signal.SIGKILL)
        killed = time.time()
        poll(lambda: trials(postgres, name)[victim.number].state is TrialState.FAIL, 0.05)
        failed = time.time() - killed
        workers[1].wait(timeout=600)
        replacement = min(t.datetime_start.timestamp() for t in trials(postgres, name)
                          if t.datetime_start.timestamp() >= killed + failed - 1)  # fmt: skip
    print(f"2. worker killed (heartbeat every {interval} s, grace {grace} s): trial failed "
          f"{failed:.1f} s after the kill, replacement started {replacement - killed:.1f} s "
          f"after it; the survivor ended with exit code {workers[1].returncode}")  # fmt: skip


def trials(postgres: Postgres, name: str, *states: TrialState) -> list[optuna.trial.FrozenTrial]:
    storage = postgres.url(name, PSYCOPG)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(states=states or None)
    except KeyError:
        return []


def poll(condition, every_s: float = 0.2, timeout_s: float = 600):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(every_s)
    raise TimeoutError(condition)


def slurm_array(postgres: Postgres, tracking: MlflowServer, workers: int = 4) -> None:
    cluster = SlurmCluster()
    try:
        walls = {}
        for shape in ("array", "one"):
            name = f"slurm_{shape}"
            overrides = [*servers(postgres, tracking, name),
                         f"hydra.sweeper.n_trials={2 * workers}"]  # fmt: skip
            with tempfile.TemporaryDirectory() as folder:
                started = time.perf_counter()
                if shape == "one":
                    subprocess.run(command(*overrides), cwd=folder, check=True,
                                   capture_output=True)  # fmt: skip
                else:
                    job = cluster.command("sbatch", "--parsable", f"--array=0-{workers - 1}",
                                          f"--chdir={folder}", "--output=/dev/null", "--wrap",
                                          shlex.join(command(*overrides))).strip()  # fmt: skip
                    poll(lambda job=job: done(cluster, job), 1)
                walls[shape] = time.perf_counter() - started
            study = trials(postgres, name)
            complete = [t for t in study if t.state is TrialState.COMPLETE]
            draws = {tuple(sorted(t.params.items())) for t in complete}
            print(
                f"3. {shape}: {len(complete)} complete of {len(study)} trials, "
                f"{len(complete) - len(draws)} duplicated draws, {walls[shape]:.0f} s"
            )
        print(f"   {workers} SLURM workers / 1 worker without SLURM, wall time: "
              f"{walls['array'] / walls['one']:.2f}")  # fmt: skip
    finally:
        cluster.remove()


def done(cluster: SlurmCluster, job: str) -> bool:
    states = cluster.command("sacct", "-X", "-n", "-P", "-o", "State", "-j", job).split()
    return bool(states) and all(state in {"COMPLETED", "FAILED", "CANCELLED"} for state in states)


def main() -> None:
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; times in one run, under the same load"
    )
    for server in (Postgres, SlurmCluster):
        if why := server.missing():
            sys.exit(why)
    postgres = Postgres()
    tracking = MlflowServer(postgres.create_database("mlflow"))
    try:
        per_trial_overhead(postgres, tracking)
        recovery(postgres, tracking)
        slurm_array(postgres, tracking)
    finally:
        tracking.remove()
        postgres.remove()


if __name__ == "__main__":
    main()
