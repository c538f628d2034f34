"""Runs and trials resume: a run's training state after every epoch, `trainer.resume`, and a
sweep's trial retried from its last finished epoch after its worker stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import torch
from optuna.trial import TrialState

from mnist_sweep import experiment, resume
from mnist_sweep.config import ConfigError
from mnist_sweep.sweep import records, retry
from mnist_sweep.sweep.liveness import OWNER
from mnist_sweep.tracking import OUTPUT_DIR

from tests.support import (
    PlainJob,
    compose_config,
    mlflow_runs,
    run_sweep,
    small_overrides,
    stop_when_saved,
    study,
    sweep_command,
)

pytestmark = pytest.mark.slow  # each test trains small runs of 3 epochs
EPOCHS = ["trainer.epochs=3", "trainer.num_threads=1", "model.dropout=0.2"]


class StopsAfter(PlainJob):
    """A job that interrupts its run after `epoch`, as Ctrl-C or a kill would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def after_epoch(self, metrics) -> None:
        if metrics.epoch == self.epoch:
            raise KeyboardInterrupt


def cfg(data_root: Path, store: Path, *extra: str):
    return compose_config([*small_overrides(data_root, store), *EPOCHS, *extra])


def interrupted(data_root: Path, store: Path, folder: Path, after: int = 2) -> None:
    with pytest.raises(KeyboardInterrupt):
        experiment.run(cfg(data_root, store), folder, StopsAfter(after))


def test_an_interrupted_run_resumes_to_the_metrics_of_an_uninterrupted_one_in_one_run(
    data_root: Path, tmp_path: Path
) -> None:
    whole = experiment.run(cfg(data_root, tmp_path / "whole"), tmp_path / "whole" / "out")
    store = tmp_path / "cut"
    interrupted(data_root, store, store / "first")
    state = torch.load(store / "first" / resume.STATE_FILE, weights_only=True)
    assert state["epoch"] == 2
    resumed = experiment.run(cfg(data_root, store, f"trainer.resume={store / 'first'}"),
                             store / "second")  # fmt: skip
    assert resumed == whole  # bit-identical on the CPU with the same thread count
    full = torch.load(tmp_path / "whole" / "out" / "model.pt", weights_only=False)
    again = torch.load(store / "second" / "model.pt", weights_only=False)
    timings = ("wall_time_s", "train_samples_per_s")
    for metrics in (full["metrics"], again["metrics"]):
        for key in timings:
            metrics.pop(key)
    assert again["metrics"] == full["metrics"]
    client = mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("mnist_sweep").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_id == again["run_id"]
    curve = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [metric.step for metric in curve] == [1, 2, 3]
    assert not (store / "second" / resume.STATE_FILE).exists()  # trainer.keep_state=false


def test_a_run_resumes_by_its_mlflow_run_id(data_root: Path, tmp_path: Path) -> None:
    interrupted(data_root, tmp_path, tmp_path / "first", after=1)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("mnist_sweep").experiment_id])
    assert run.data.tags[OUTPUT_DIR] == str((tmp_path / "first").resolve())
    experiment.run(cfg(data_root, tmp_path, f"trainer.resume={run.info.run_id}",
                       "trainer.keep_state=true"), tmp_path / "second")  # fmt: skip
    curve = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [metric.step for metric in curve] == [1, 2, 3]
    assert torch.load(tmp_path / "second" / resume.STATE_FILE, weights_only=True)["epoch"] == 3


def test_a_state_of_other_settings_is_refused_naming_the_keys(
    data_root: Path, tmp_path: Path
) -> None:
    interrupted(data_root, tmp_path, tmp_path / "first")
    other = cfg(data_root, tmp_path, f"trainer.resume={tmp_path / 'first'}", "optimizer.lr=0.01")
    with pytest.raises(ConfigError, match=r"other settings \(optimizer.lr: 0.001 -> 0.01\)"):
        experiment.run(other, tmp_path / "second")
    # Speed settings are not compared: another evaluation batch size resumes.
    same = cfg(
        data_root, tmp_path, f"trainer.resume={tmp_path / 'first'}", "data.eval_batch_size=500"
    )
    experiment.run(same, tmp_path / "third")


@pytest.mark.parametrize("damage", ["truncated", "foreign", "missing", "unknown run"])
def test_a_state_that_cannot_be_resumed_is_one_config_error_naming_it(
    data_root: Path, tmp_path: Path, damage: str
) -> None:
    interrupted(data_root, tmp_path, tmp_path / "first")
    state = tmp_path / "first" / resume.STATE_FILE
    where = str(tmp_path / "first")
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, state)
    elif damage == "missing":
        state.unlink()
    else:
        where = "0123456789abcdef"
    expected = {"truncated": "not a whole training state", "foreign": "not a training state",
                "missing": "no training state there",
                "unknown run": "neither a run's folder nor an MLflow run id"}[damage]  # fmt: skip
    with pytest.raises(ConfigError, match=expected) as error:
        experiment.run(cfg(data_root, tmp_path, f"trainer.resume={where}"), tmp_path / "second")
    assert str(error.value).startswith(f"trainer.resume={where}: ")
    assert "\n" not in str(error.value)


def test_a_crash_while_writing_a_state_leaves_the_previous_one(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / resume.STATE_FILE
    resume.save(path, {"config": {}, "epoch": 1})

    def torn(obj, file) -> None:
        file.write(b"half a state")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError, match="No space"):
        resume.save(path, {"config": {}, "epoch": 2})
    monkeypatch.undo()
    assert resume.load(path, {})["epoch"] == 1
    assert [item.name for item in tmp_path.iterdir()] == [resume.STATE_FILE]


# A sweep of two 4-epoch trials, one thread each: a retried trial's result is bit-identical to
# the uninterrupted one's.
SWEEP = ["hydra.sweeper.n_trials=2", "trainer.epochs=4", "trainer.num_threads=1",
         "sweep.min_test_accuracy=0.5"]  # fmt: skip
# The pruner judges trial 1 against trial 0 at every epoch.
PRUNING = [*SWEEP, "hydra.sweeper.pruner.n_startup_trials=1"]


@pytest.fixture(scope="module")
def uninterrupted(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What each sweep's trials end as when nothing stops them: {overrides: trials}."""
    ends = {}
    for overrides in (SWEEP, PRUNING):
        folder = tmp_path_factory.mktemp("uninterrupted")
        run_sweep(folder, data_root, *overrides)
        ends[tuple(overrides)] = study(folder).trials
    return ends


def the_retry(folder: Path, of: int):
    [retried] = [trial for trial in study(folder).trials if retry.earlier_attempts(trial) == [of]]
    return retried


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_a_stopped_trial_continues_from_its_next_epoch_in_its_mlflow_run(
    data_root: Path, tmp_path: Path, uninterrupted: dict, stop: signal.Signals
) -> None:
    saved = stop_when_saved(data_root, tmp_path, SWEEP, stop)
    assert 1 <= saved < 4
    rerun = run_sweep(tmp_path, data_root, *SWEEP)
    assert f"after epoch {saved} from {tmp_path}/multirun/mlp/trial_0/state.pt" in rerun.stdout

    trials, retried = study(tmp_path).trials, the_retry(tmp_path, of=0)
    assert trials[0].state is TrialState.FAIL and retried.params == trials[0].params
    done = [trial for trial in trials if trial.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 2 and retried.state is TrialState.COMPLETE  # n_trials, retry included
    assert sorted(retried.intermediate_values) == [1, 2, 3, 4]
    assert retried.value == uninterrupted[tuple(SWEEP)][0].value  # bit-identical

    client, runs = mlflow_runs(tmp_path, "trial")
    assert sorted(run.info.status for run in runs) == ["FINISHED", "FINISHED"]
    [run] = [run for run in runs if run.data.tags.get(records.RETRY_OF) == "0"]
    assert run.data.tags[records.TRIAL_NUMBER] == str(retried.number)
    curve = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [metric.step for metric in curve] == [1, 2, 3, 4]  # one curve, each epoch once
    assert not list((tmp_path / "multirun" / "mlp").glob("*/state.pt"))
    assert (tmp_path / "multirun" / "mlp" / "best" / "model.pt").exists()


def test_a_killed_joblib_worker_costs_its_trial_a_retry_not_the_sweep(
    data_root: Path, tmp_path: Path, uninterrupted: dict
) -> None:
    overrides = [*SWEEP, "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2"]
    sweep = subprocess.Popen(
        sweep_command(data_root, *overrides), cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    state = tmp_path / "multirun" / "mlp" / "trial_0" / resume.STATE_FILE
    deadline = time.monotonic() + 300
    while not state.exists():
        assert time.monotonic() < deadline and sweep.poll() is None, "no state was saved"
        time.sleep(0.01)
    _, runs = mlflow_runs(tmp_path, "trial")
    [first] = [run for run in runs if run.data.tags[records.TRIAL_NUMBER] == "0"]
    os.kill(int(first.data.tags[OWNER].rpartition(":")[2]), signal.SIGKILL)  # its worker
    output, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, output[-3000:]
    trials = study(tmp_path).trials
    done = [trial for trial in trials if trial.state is TrialState.COMPLETE]
    assert len(done) == 2 and trials[0].state is TrialState.FAIL
    retried = the_retry(tmp_path, of=0)
    assert retried.state is TrialState.COMPLETE
    assert retried.value == uninterrupted[tuple(SWEEP)][0].value


def test_a_retried_trial_gets_the_pruning_decision_of_an_uninterrupted_one(
    data_root: Path, tmp_path: Path, uninterrupted: dict
) -> None:
    whole = uninterrupted[tuple(PRUNING)][1]
    # The test means something only if the pruner stops trial 1 when nothing interrupts it.
    assert whole.state is TrialState.PRUNED
    stop_when_saved(data_root, tmp_path, PRUNING, signal.SIGKILL, trial=1)
    run_sweep(tmp_path, data_root, *PRUNING)
    retried = the_retry(tmp_path, of=1)
    assert retried.state is TrialState.PRUNED
    assert retried.intermediate_values == whole.intermediate_values
    _, runs = mlflow_runs(tmp_path, "trial")
    [run] = [run for run in runs if run.data.tags.get(records.RETRY_OF) == "1"]
    assert run.info.status == "KILLED"
    assert run.data.tags[records.PRUNED_AT_EPOCH] == str(max(whole.intermediate_values))


def test_a_retried_trial_with_a_torn_state_starts_over_with_one_warning(
    data_root: Path, tmp_path: Path, uninterrupted: dict
) -> None:
    stop_when_saved(data_root, tmp_path, SWEEP, signal.SIGKILL)
    state = tmp_path / "multirun" / "mlp" / "trial_0" / resume.STATE_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    rerun = run_sweep(tmp_path, data_root, *SWEEP)
    [warning] = [line for line in rerun.stdout.splitlines() if "Starting over" in line]
    assert f"Starting over from epoch 1: {state}: " in warning
    retried = the_retry(tmp_path, of=0)
    assert retried.state is TrialState.COMPLETE
    assert retried.value == uninterrupted[tuple(SWEEP)][0].value  # trained from epoch 1
    _, runs = mlflow_runs(tmp_path, "trial")
    # The first attempt's run keeps what it logged, FAILED; the retry has a run of its own.
    assert sorted(run.info.status for run in runs) == ["FAILED", "FINISHED", "FINISHED"]


class Retried(StopsAfter):
    """A sweep's job whose trial's earlier attempt left the training state `state`."""

    def __init__(self, state: Path) -> None:
        super().__init__(epoch=0)
        self.state, self.resumed_with = state, None

    def states(self) -> list[Path]:
        return [self.state]

    def resumed(self, history) -> None:
        self.resumed_with = history


@pytest.mark.parametrize("damage", ["foreign", "other settings", "missing"])
def test_a_job_given_a_damaged_state_trains_from_epoch_1_and_warns_naming_it(
    data_root: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    interrupted(data_root, tmp_path, tmp_path / "first")
    state = tmp_path / "first" / resume.STATE_FILE
    overrides = ["optimizer.lr=0.01"] if damage == "other settings" else []
    if damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, state)
    elif damage == "missing":
        state.unlink()
    job = Retried(state)
    experiment.run(cfg(data_root, tmp_path, *overrides), tmp_path / "second", job)
    [warning] = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warning.startswith(f"Starting over from epoch 1: {state}")
    assert job.resumed_with is None
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.get_experiment_by_name("mnist_sweep").experiment_id
    assert len(client.search_runs([experiment_id])) == 2  # the retry's run is a new one


def test_a_job_given_its_earlier_state_reports_it_and_continues(
    data_root: Path, tmp_path: Path
) -> None:
    interrupted(data_root, tmp_path, tmp_path / "first")
    job = Retried(tmp_path / "first" / resume.STATE_FILE)
    experiment.run(cfg(data_root, tmp_path), tmp_path / "second", job)
    assert [metrics.epoch for metrics in job.resumed_with] == [1, 2]
    assert not job.state.exists()  # the state it continued is spent


def test_a_state_left_by_a_deleted_study_of_the_same_name_is_not_continued(
    data_root: Path, tmp_path: Path, uninterrupted: dict
) -> None:
    stop_when_saved(data_root, tmp_path, SWEEP, signal.SIGKILL)
    (tmp_path / "optuna_journal.log").unlink()  # the study is started again from nothing
    rerun = run_sweep(tmp_path, data_root, *SWEEP)
    assert "Continuing" not in rerun.stdout
    assert study(tmp_path).trials[0].value == uninterrupted[tuple(SWEEP)][0].value
