"""`python run.py -m` sweeps through Hydra, in temporary directories."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import TrialState

import mnist_sweep
from mnist_sweep import tracking
from mnist_sweep.data import DataFiles, torchvision_dataset
from mnist_sweep.sweep import liveness, records, retry
from mnist_sweep.sweep.liveness import process_is_gone
from mnist_sweep.sweep.sweeper import is_grid

from tests.support import (
    Meeting,
    at_once,
    flock_waiters,
    mlflow_runs,
    run_sweep,
    states,
    stop_when_saved,
    study,
    sweep_command,
)

WORKERS = ["worker-0", "worker-1"]  # the threads of tests.support.in_threads


@pytest.mark.slow
def test_sweep_tracks_every_trial_under_its_sweep_and_keeps_the_best(
    data_root: Path, tmp_path: Path
) -> None:
    run_sweep(tmp_path, data_root, "hydra.sweeper.n_trials=3", "sweep.min_test_accuracy=0.5")
    assert states(tmp_path) == [TrialState.COMPLETE] * 3
    client, [parent] = mlflow_runs(tmp_path, "sweep")
    _, trials = mlflow_runs(tmp_path, "trial")
    assert len(trials) == 3 and parent.info.status == "FINISHED"
    assert sorted(run.info.run_name for run in trials) == ["trial_0", "trial_1", "trial_2"]
    assert parent.info.run_name == "sweep mlp"
    assert {run.data.tags["mlflow.parentRunId"] for run in trials} == {parent.info.run_id}
    assert len({frozenset(run.data.params) for run in trials}) == 1  # same keys in every trial
    assert all("test_accuracy" in run.data.metrics for run in trials)
    summary = {artifact.path for artifact in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "best.json", "optimization_history.png"} <= summary

    best = tmp_path / "multirun" / "mlp" / "best"
    model = mnist_sweep.load_model(best / "model.pt")
    test = torchvision_dataset(DataFiles(str(data_root)), train=False)
    images = test.data.unsqueeze(1).float() / 255
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == test.targets).float().mean().item()
    best_run = max(trials, key=lambda run: run.data.metrics["val_accuracy"])
    assert accuracy == pytest.approx(best_run.data.metrics["test_accuracy"], abs=1e-6)
    assert accuracy >= 0.5
    # Every trial logs model.pt; only the kept one has the MLflow Model and the report.
    for run in trials:
        assert {"model.pt", "config.yaml"} <= {
            a.path for a in client.list_artifacts(run.info.run_id)
        }
    [logged] = client.search_logged_models([parent.info.experiment_id])
    assert logged.source_run_id == best_run.info.run_id
    assert "test_macro_f1" in client.get_run(best_run.info.run_id).data.metrics
    assert (best / "evaluation" / "per_class.csv").exists()
    champion = client.get_model_version_by_alias("mnist_sweep_mlp", "champion")
    assert champion.run_id == best_run.info.run_id
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    served = mlflow.pyfunc.load_model("models:/mnist_sweep_mlp@champion").predict(images.numpy())
    torch.testing.assert_close(torch.from_numpy(served), model(images).detach())


@pytest.mark.slow
def test_cnn_sweep_searches_cnn_shapes_in_its_own_study(data_root: Path, tmp_path: Path) -> None:
    run_sweep(tmp_path, data_root, "sweep=cnn_small", "hydra.sweeper.n_trials=2",
              "data.train_subset=1000", "sweep.min_test_accuracy=0.2")  # fmt: skip
    trials = study(tmp_path, "cnn_small").trials
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 2
    assert all(trial.params["model.channels"].startswith("[") for trial in trials)
    _, runs = mlflow_runs(tmp_path, "trial")
    assert {run.data.params["model.arch"] for run in runs} == {"cnn"}
    assert {run.data.params["data.augment.rotation"] for run in runs} == {"10.0"}
    model = mnist_sweep.load_model(tmp_path / "multirun" / "cnn_small" / "best" / "model.pt")
    assert model.net.hparams["arch"] == "cnn"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    images = torch.rand(3, 1, 28, 28)
    served = mlflow.pyfunc.load_model("models:/mnist_sweep_cnn_small@champion").predict(
        images.numpy()
    )
    torch.testing.assert_close(torch.from_numpy(served), model(images).detach())


@pytest.mark.slow
def test_two_processes_share_one_study(data_root: Path, tmp_path: Path) -> None:
    command = sweep_command(data_root, "hydra.sweeper.n_trials=4", "sweep.min_test_accuracy=0.5")
    processes = [
        subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stderr.read().decode()[-3000:]
    assert states(tmp_path) == [TrialState.COMPLETE] * 4
    _, trials = mlflow_runs(tmp_path, "trial")
    assert sorted(run.data.tags["mnist_sweep.trial"] for run in trials) == [
        f"trial_{n}" for n in range(4)
    ]
    _, parents = mlflow_runs(tmp_path, "sweep")
    assert len(parents) == 1


@pytest.mark.parametrize("older", ["first", "second"])
def test_workers_that_race_to_create_the_sweep_parent_all_keep_the_same_one(
    tmp_path: Path, older: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("race")
    # Both workers find no parent, and both create one before either looks again: each waits
    # at a barrier after its first look and after creating. `older` is the first worker's
    # parent, or the second's.
    starts = {"worker-0": 1, "worker-1": 2} if older == "first" else {"worker-0": 2, "worker-1": 1}
    made, create_run = {}, client.create_run

    def create_at_its_start(*args, **kwargs) -> mlflow.entities.Run:
        worker = threading.current_thread().name
        made[worker] = create_run(*args, start_time=starts[worker], **kwargs)
        return made[worker]

    monkeypatch.setattr(client, "create_run", create_at_its_start)
    looked = Meeting(monkeypatch, records, "sweep_runs")
    created = Meeting(monkeypatch, client, "create_run")
    kept = at_once(records.sweep_parent, client, experiment, "race/study", True)
    assert sorted(looked.passed) == sorted(created.passed) == sorted(made) == WORKERS
    assert kept[0].info.run_id == kept[1].info.run_id
    parent = records.sweep_parent(client, experiment, "race/study")
    assert parent.info.run_id == kept[0].info.run_id
    assert parent.info.run_id == made["worker-0" if older == "first" else "worker-1"].info.run_id
    assert [run.info.run_id for run in records.sweep_runs(
        client, experiment, "race/study", "sweep")] == [parent.info.run_id]  # fmt: skip


@pytest.mark.slow
def test_processes_initializing_one_new_store_at_once_take_turns(tmp_path: Path) -> None:
    """Two sweeps that start together on a new SQLite store would both create its tables and
    one would fail ("table ... already exists"): both come to the store's lock, held here
    until both wait for it, then both succeed, one after the other."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    script = "import sys; from mnist_sweep import tracking; tracking.initialize_store(sys.argv[1])"
    lock_path = tmp_path / "mlflow.db.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        workers = [subprocess.Popen([sys.executable, "-c", script, uri], stderr=subprocess.PIPE,
                                    text=True) for _ in WORKERS]  # fmt: skip
        deadline = time.monotonic() + 120
        while flock_waiters(lock_path) < len(workers):
            assert time.monotonic() < deadline, "the processes never came to the store's lock"
            assert all(worker.poll() is None for worker in workers), "one ended without it"
            time.sleep(0.05)
        fcntl.flock(lock, fcntl.LOCK_UN)
    for worker in workers:
        assert worker.wait(timeout=120) == 0, worker.stderr.read()[-3000:]
    [default] = mlflow.MlflowClient(uri).search_experiments()
    assert default.name == "Default"


def test_a_parent_kept_before_an_older_one_appeared_gives_way_and_its_trials_move(
    tmp_path: Path,
) -> None:
    """A worker that looked before a racing worker's parent was stored kept its own; the other
    worker, whose clock put its parent first, sees both and must delete that one."""
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("race")
    tags = {records.SWEEP_ID: "race/study", tracking.ROLE: "sweep"}
    newer = client.create_run(experiment, tags=tags, start_time=2)
    assert records.keep_one_parent(client, experiment, "race/study").info.run_id == (
        newer.info.run_id
    )
    trial = client.create_run(experiment, tags={MLFLOW_PARENT_RUN_ID: newer.info.run_id})
    older = client.create_run(experiment, tags=tags, start_time=1)
    kept = records.keep_one_parent(client, experiment, "race/study")
    assert kept.info.run_id == older.info.run_id
    assert [run.info.run_id for run in records.sweep_runs(
        client, experiment, "race/study", "sweep")] == [older.info.run_id]  # fmt: skip
    records.nest_under(client, kept, [client.get_run(trial.info.run_id)])
    assert client.get_run(trial.info.run_id).data.tags[MLFLOW_PARENT_RUN_ID] == older.info.run_id


@pytest.mark.slow
def test_sweep_below_the_threshold_keeps_nothing_and_says_so(
    data_root: Path, tmp_path: Path
) -> None:
    done = run_sweep(
        tmp_path, data_root, "hydra.sweeper.n_trials=2", "sweep.min_test_accuracy=0.999"
    )
    assert "kept nothing" in done.stderr + done.stdout
    assert not (tmp_path / "multirun" / "mlp" / "best").exists()
    client, _ = mlflow_runs(tmp_path, "trial")
    assert not client.search_registered_models()


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(data_root: Path, tmp_path: Path) -> None:
    run_sweep(
        tmp_path, data_root, "hydra.sweeper.n_trials=3", "sweep.min_test_accuracy=0.5",
        "optimizer.lr=choice(0.002,1e30)", "hydra.sweeper.max_failure_rate=1.0",
    )  # fmt: skip
    seen = states(tmp_path)
    assert seen.count(TrialState.COMPLETE) == 3 and TrialState.FAIL in seen
    _, trials = mlflow_runs(tmp_path, "trial")
    assert {run.info.status for run in trials} == {"FINISHED", "FAILED"}


@pytest.mark.slow
def test_parallel_trials_with_the_joblib_launcher(data_root: Path, tmp_path: Path) -> None:
    run_sweep(
        tmp_path, data_root, "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=2", "sweep.min_test_accuracy=0.5",
    )  # fmt: skip
    assert states(tmp_path) == [TrialState.COMPLETE] * 2
    _, trials = mlflow_runs(tmp_path, "trial")
    assert sorted(run.data.tags["mnist_sweep.trial"] for run in trials) == ["trial_0", "trial_1"]


@pytest.mark.slow
def test_a_packed_sweep_runs_one_thread_per_core_and_ends_with_exactly_n_trials(
    data_root: Path, tmp_path: Path
) -> None:
    run_sweep(
        tmp_path, data_root, "hydra/launcher=joblib", "hydra.sweeper.n_jobs=auto",
        "hydra.sweeper.n_trials=3", "sweep.min_test_accuracy=0.5", "trainer.device=cpu",
    )  # fmt: skip
    assert states(tmp_path) == [TrialState.COMPLETE] * 3
    _, trials = mlflow_runs(tmp_path, "trial")
    cores = os.cpu_count()
    threads = cores // (cores // 1)  # trainer.num_threads=0: one thread per trial
    for run in trials:  # what torch ran with, recorded inside each trial
        assert run.data.tags[tracking.TORCH_THREADS] == str(threads)
        assert run.data.params["trainer.num_threads"] == str(threads)
    assert (tmp_path / "multirun" / "mlp" / "best" / "model.pt").exists()


PACKED = ["hydra/launcher=joblib", "hydra.sweeper.n_jobs=auto", "trainer.device=cpu"]


@pytest.mark.slow
def test_a_packed_sweep_stopped_with_ctrl_c_resumes_to_exactly_n_trials(
    data_root: Path, tmp_path: Path
) -> None:
    overrides = [*PACKED, "hydra.sweeper.n_trials=3", "trainer.epochs=3",
                 "sweep.min_test_accuracy=0.5"]  # fmt: skip
    stop_when_saved(data_root, tmp_path, overrides, signal.SIGINT)
    stopped = [trial.number for trial in study(tmp_path).trials
               if trial.state is TrialState.FAIL]  # fmt: skip
    assert stopped  # Ctrl-C stopped the trials in flight
    run_sweep(tmp_path, data_root, *overrides)
    trials = study(tmp_path).trials
    assert sum(trial.state is TrialState.COMPLETE for trial in trials) == 3
    assert [t.number for t in trials if t.state is TrialState.FAIL] == stopped
    assert {n for trial in trials for n in retry.earlier_attempts(trial)} == set(stopped)
    client, runs = mlflow_runs(tmp_path, "trial")
    finished = [run for run in runs if run.info.status == "FINISHED"]
    assert len(finished) == 3 and {run.info.status for run in runs} <= {"FINISHED", "FAILED"}
    for run in finished:  # one curve each, every epoch once, continued or not
        curve = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert sorted(metric.step for metric in curve) == [1, 2, 3]


@pytest.mark.slow
def test_a_packed_grid_keeps_the_model_that_one_trial_at_a_time_keeps(
    data_root: Path, tmp_path: Path
) -> None:
    # One thread each way, so that the trials' results are the same bit for bit.
    grid = ["optimizer.lr=0.0003,0.003", "trainer.num_threads=1", "sweep.min_test_accuracy=0.5"]
    kept = {}
    for way, extra in {"packed": PACKED, "one_at_a_time": []}.items():
        (folder := tmp_path / way).mkdir()
        run_sweep(folder, data_root, *grid, *extra)
        [metrics] = folder.glob("multirun/mlp/grid_*/best/metrics.json")
        kept[way] = json.loads(metrics.read_text())
        for key in ("run_id", "wall_time_s", "train_samples_per_s"):
            kept[way].pop(key)
        kept[way]["trial"] = kept[way]["trial"].rpartition("/")[2]  # grid_<time>/<job>
    assert kept["packed"] == kept["one_at_a_time"]


@pytest.mark.slow
def test_comma_lists_run_a_plain_grid_apart_from_the_study(data_root: Path, tmp_path: Path) -> None:
    run_sweep(tmp_path, data_root, "hydra.sweeper.n_trials=1", "sweep.min_test_accuracy=0.5")
    client, [study_parent] = mlflow_runs(tmp_path, "sweep")
    done = run_sweep(tmp_path, data_root, "optimizer=adam,sgd", "data.batch_size=128,256",
                     "sweep.min_test_accuracy=0.5")  # fmt: skip
    _, trials = mlflow_runs(tmp_path, "trial")
    grid_trials = [run for run in trials if run.data.tags["mnist_sweep.sweep_id"] != "mlp"]
    pairs = {(run.data.params["optimizer.name"], run.data.params["data.batch_size"])
             for run in grid_trials}  # fmt: skip
    assert pairs == {("adam", "128"), ("adam", "256"), ("sgd", "128"), ("sgd", "256")}
    assert len(study(tmp_path).trials) == 1  # a grid asks no sampler and adds no trial
    [grid] = (tmp_path / "multirun" / "mlp").glob("grid_*")
    assert sorted(path.name for path in grid.iterdir()) == ["0", "1", "2", "3", "best"]
    # Its own parent run; the study's parent, its trial count and trials.md are untouched.
    _, parents = mlflow_runs(tmp_path, "sweep")
    [grid_parent] = [run for run in parents if run.info.run_id != study_parent.info.run_id]
    assert grid_parent.data.tags["mnist_sweep.sweep_id"] == f"mlp/{grid.name}"
    assert {run.data.tags[MLFLOW_PARENT_RUN_ID] for run in grid_trials} == {grid_parent.info.run_id}
    assert client.get_run(study_parent.info.run_id).data.metrics == study_parent.data.metrics
    table = client.download_artifacts(study_parent.info.run_id, "trials.md", str(tmp_path))
    assert Path(table).read_text().count("trial_") == 1
    assert f"@best_mlp_{grid.name}" in done.stdout + done.stderr


def test_abandoned_trials_are_those_of_dead_or_missing_owners(monkeypatch) -> None:
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    frozen = lambda: study.get_trials(deepcopy=False)[0]  # noqa: E731
    assert not liveness.is_abandoned(frozen(), by_pid=True)  # just asked: being claimed
    monkeypatch.setattr(liveness, "OWNER_GRACE_S", -1.0)
    assert liveness.is_abandoned(frozen(), by_pid=True)  # nobody claimed it
    trial.set_user_attr(liveness.OWNER, liveness.this_process())
    assert not liveness.is_abandoned(frozen(), by_pid=True)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    dead = f"{os.uname().nodename}:{finished.stdout.strip()}"
    trial.set_user_attr(liveness.OWNER, dead)
    assert liveness.is_abandoned(frozen(), by_pid=True)
    assert not liveness.is_abandoned(frozen(), by_pid=False)  # heartbeats judge it instead
    failed = []
    liveness.Liveness(storage, lambda _, trial: failed.append(trial.number)).fail_abandoned(study)
    assert failed == [0]
    assert study.trials[0].state is TrialState.FAIL


def test_grid_detection_and_helpers() -> None:
    assert is_grid(["optimizer=adam,sgd", "trainer.epochs=2"])
    assert not is_grid(["optimizer.lr=tag(log, interval(1e-4, 1e-1))"])
    assert not is_grid(["optimizer=choice(adam,sgd)"])
    assert not is_grid([])
    assert not process_is_gone(f"{os.uname().nodename}:{os.getpid()}")
    assert not process_is_gone("another-host:1")
