"""A single run resumes: its training state after every epoch, and `trainer.resume`."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch

from mnist_sweep import experiment, resume
from mnist_sweep.config import ConfigError
from mnist_sweep.tracking import OUTPUT_DIR

from tests.support import compose_config, small_overrides

pytestmark = pytest.mark.slow  # each test trains small runs of 3 epochs
EPOCHS = ["trainer.epochs=3", "trainer.num_threads=1", "model.dropout=0.2"]


class StopsAfter:
    """A job that interrupts its run after `epoch`, as Ctrl-C or a kill would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def tags(self, config) -> dict[str, str]:
        return {}

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
