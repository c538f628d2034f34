"""Pruning: jobs report each epoch to their trial through the study's storage and stop when
the sweep's pruner says so, wherever they run."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from mnist_sweep.sweep.job import Pruned
from mnist_sweep.sweep.liveness import Liveness
from mnist_sweep.sweep.pruning import make_pruner
from mnist_sweep.sweep.sweeper import ResumableOptunaSweeperImpl

from tests.support import interrupt_mid_trial, mlflow_runs, run_sweep, states, study, sweep_command

# In place of the default pruner: any validation accuracy is below 1.0, so every trial is
# pruned after its first epoch.
ALWAYS = ["~pruner", "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:1.0}"]
SMALL = ["data.train_subset=1000", "model.hidden_sizes=[64,32]", "trainer.epochs=2"]


def assert_all_pruned_at_first_epoch(folder: Path, n_trials: int) -> None:
    assert states(folder) == [TrialState.PRUNED] * n_trials
    assert all(list(trial.intermediate_values) == [1] for trial in study(folder).trials)
    _, runs = mlflow_runs(folder, "trial")
    assert len(runs) == n_trials
    for run in runs:
        assert run.info.status == "KILLED"
        assert run.data.tags["mnist_sweep.pruned_at_epoch"] == "1"
        assert {"train_loss", "val_accuracy"} <= set(run.data.metrics)  # kept what it logged
        assert "test_accuracy" not in run.data.metrics


@pytest.mark.slow
def test_a_sweep_whose_pruner_prunes_every_trial_keeps_nothing(
    data_root: Path, tmp_path: Path
) -> None:
    done = run_sweep(tmp_path, data_root, *SMALL, "hydra.sweeper.n_trials=2", *ALWAYS)
    assert_all_pruned_at_first_epoch(tmp_path, 2)
    assert "kept nothing" in done.stderr + done.stdout
    assert not (tmp_path / "multirun" / "mlp" / "best").exists()
    assert list((tmp_path / "multirun" / "mlp").glob("trial_*/state.pt")) == []  # never resumed
    client, [parent] = mlflow_runs(tmp_path, "sweep")
    assert parent.data.metrics["pruned_trials"] == 2
    assert parent.data.metrics["finished_trials"] == 0
    trials_csv = client.download_artifacts(parent.info.run_id, "trials.csv", str(tmp_path))
    assert Path(trials_csv).read_text().count(",1,") == 2  # pruned_at_epoch column


@pytest.mark.slow
def test_a_median_pruned_sweep_keeps_the_best_complete_trial(
    data_root: Path, tmp_path: Path
) -> None:
    # Sampler seed 38 draws lr 3e-3, 3e-3, then 1e-5 (trials are seeded from (seed, number),
    # sampling.py): the two trials that start the median train normally; those at 1e-5 fall
    # far below it after one epoch.
    run_sweep(
        tmp_path, data_root, *SMALL, "hydra.sweeper.n_trials=5", "sweep.min_test_accuracy=0.5",
        "hydra.sweeper.sampler.seed=38", "optimizer.lr=choice(3e-3,1e-5)",
        "pruner=median", "hydra.sweeper.pruner.n_startup_trials=2",
    )  # fmt: skip
    trials = study(tmp_path).trials
    assert [t.params["optimizer.lr"] for t in trials[:4]] == [3e-3, 3e-3, 1e-5, 1e-5]
    assert [t.state for t in trials[:4]] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED] * 2
    assert len(trials) == 5  # pruned trials count toward n_trials
    _, runs = mlflow_runs(tmp_path, "trial")
    status = {run.data.tags["mnist_sweep.trial"]: run.info.status for run in runs}
    assert [status[f"trial_{n}"] for n in range(4)] == ["FINISHED"] * 2 + ["KILLED"] * 2
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)
    kept = (tmp_path / "multirun" / "mlp" / "best" / "metrics.json").read_text()
    assert f'"trial": "trial_{best.number}"' in kept


@pytest.mark.slow
def test_pruning_in_joblib_workers(data_root: Path, tmp_path: Path) -> None:
    run_sweep(
        tmp_path, data_root, *SMALL, "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=3", *ALWAYS,
    )  # fmt: skip
    assert_all_pruned_at_first_epoch(tmp_path, 3)


@pytest.mark.slow
def test_pruning_in_two_cooperating_processes(data_root: Path, tmp_path: Path) -> None:
    command = sweep_command(data_root, *SMALL, "hydra.sweeper.n_trials=4", *ALWAYS)
    processes = [
        subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stderr.read().decode()[-3000:]
    assert_all_pruned_at_first_epoch(tmp_path, 4)


@pytest.mark.slow
def test_a_resumed_sweep_keeps_pruned_trials_pruned(data_root: Path, tmp_path: Path) -> None:
    overrides = [*SMALL, "trainer.epochs=30", "hydra.sweeper.n_trials=4", *ALWAYS]
    before = interrupt_mid_trial(data_root, tmp_path, overrides, signal.SIGKILL, TrialState.PRUNED)
    assert 1 <= before.count(TrialState.PRUNED) < 4

    run_sweep(tmp_path, data_root, *overrides)
    after = states(tmp_path)
    assert after[: len(before)] == [
        TrialState.FAIL if state is TrialState.RUNNING else state for state in before
    ]
    assert after.count(TrialState.PRUNED) == 4 and TrialState.COMPLETE not in after


@pytest.mark.slow
def test_a_grid_never_prunes(data_root: Path, tmp_path: Path) -> None:
    run_sweep(tmp_path, data_root, *SMALL, "optimizer=adam,sgd", *ALWAYS)
    _, runs = mlflow_runs(tmp_path, "trial")
    assert [run.info.status for run in runs] == ["FINISHED"] * 2


class TimedLauncher:
    """Stands in for a Hydra launcher: each job sleeps, then returns a value or a pruning."""

    def __init__(self, seconds: dict[int, float], pruned: set[int]) -> None:
        self.seconds, self.pruned, self.ended = seconds, pruned, []
        self.lock = threading.Lock()

    def launch(self, overrides: list, initial_job_idx: int) -> list[JobReturn]:
        time.sleep(self.seconds.get(initial_job_idx, 0.05))
        with self.lock:
            self.ended.append(initial_job_idx)
        if initial_job_idx in self.pruned:
            return [JobReturn(status=JobStatus.COMPLETED, _return_value=Pruned(epoch=1))]
        return [JobReturn(status=JobStatus.COMPLETED, _return_value=0.5)]


def test_a_freed_slot_is_refilled_without_waiting_for_the_slowest_trial() -> None:
    launcher = TimedLauncher(seconds={0: 1.5}, pruned={1, 3})
    sweeper = ResumableOptunaSweeperImpl(
        pruner=None, sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize",
        storage=None, study_name=None, n_trials=5, n_jobs=2, max_failure_rate=0.0,
        custom_search_space=None, params=None,
    )  # fmt: skip
    sweeper.launcher, sweeper.config, sweeper.identity = launcher, None, "timed"
    storage = optuna.storages.InMemoryStorage()
    sweeper.storage, sweeper.liveness = storage, Liveness(storage, lambda study, trial: None)
    study = optuna.create_study(direction="maximize", storage=storage)
    sweeper._run_trials(study, ({"x": FloatDistribution(0, 1)}, {}, []), sweeper.n_trials, "trial")
    # Trials 1-4 ran one after another in the second slot while trial 0 held the first.
    assert launcher.ended == [1, 2, 3, 4, 0]
    assert [trial.state for trial in study.trials] == [
        TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE, TrialState.PRUNED,
        TrialState.COMPLETE,
    ]  # fmt: skip


def test_a_pruner_config_must_name_an_optuna_pruner() -> None:
    assert make_pruner(None) is None
    median = make_pruner({"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 3})
    assert isinstance(median, optuna.pruners.MedianPruner)
    with pytest.raises(Exception, match=r"whitelist|allowed|not permitted"):
        make_pruner({"_target_": "os.getcwd"})
    with pytest.raises(TypeError, match=r"optuna\.pruners class"):
        make_pruner({"_target_": "optuna.pruners._filter_study", "_partial_": True})
