"""Where the MLflow store is (one rule for every command), the experiment's kind and the name of
a run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from mnist_sweep import evaluate, tracking
from mnist_sweep.config import MlflowConfig, to_run_config

from tests.support import compose_config

ENV = tracking.STORE_ENVIRONMENT


def test_the_store_is_the_explicit_one_else_the_recorded_else_the_environments_else_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert tracking.store() == tracking.DEFAULT_STORE == "sqlite:///mlflow.db"
    monkeypatch.setenv(ENV, "http://env:5000")
    assert tracking.store() == "http://env:5000"
    assert tracking.store(recorded="sqlite:///run.db") == "sqlite:///run.db"
    assert tracking.store("http://flag:5000", "sqlite:///run.db") == "http://flag:5000"
    monkeypatch.setenv(ENV, "")  # set to nothing: unset, as MLflow reads it
    assert tracking.store() == tracking.DEFAULT_STORE


def test_a_run_sets_mlflows_store_without_exporting_it_to_child_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    previous = mlflow.get_tracking_uri()
    config = MlflowConfig(f"sqlite:///{tmp_path}/mlflow.db", "exported", "run")
    try:
        with tracking.tracked_run(config, {}):
            assert mlflow.get_tracking_uri() == config.tracking_uri
            assert ENV not in os.environ
        monkeypatch.setenv(ENV, "http://env:5000")
        tracking.use_store(config.tracking_uri)
        assert os.environ[ENV] == "http://env:5000"  # what the user set stays
    finally:
        tracking.use_store(previous)


def test_the_experiment_is_marked_as_one_of_training_runs_new_or_old(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    new = tracking.experiment_id(MlflowConfig(uri, "new", None))
    assert client.get_experiment(new).tags[tracking.EXPERIMENT_KIND] == tracking.TRAINING
    old = client.create_experiment("old")  # as an earlier version of mnist_sweep made it
    assert tracking.experiment_id(MlflowConfig(uri, "old", None)) == old
    assert client.get_experiment(old).tags[tracking.EXPERIMENT_KIND] == "custom_model_development"
    client.set_experiment_tag(old, tracking.EXPERIMENT_KIND, "genai_development")
    tracking.experiment_id(MlflowConfig(uri, "old", None))
    assert client.get_experiment(old).tags[tracking.EXPERIMENT_KIND] == "genai_development"


def test_a_single_run_is_named_for_what_it_trains() -> None:
    valid = ["mlflow.tracking_uri=sqlite:///mlflow.db"]
    config = to_run_config(compose_config(valid))
    assert tracking.run_name(config) == "mlp adam lr=0.001 bs=128"
    other = ["model=cnn_small", "optimizer=sgd", "optimizer.lr=0.05", "data=fashion_mnist"]
    config = to_run_config(compose_config([*valid, *other]))
    assert tracking.run_name(config) == "fashion_mnist cnn sgd lr=0.05 bs=128"


@pytest.mark.parametrize(
    ("run_name", "tags", "expected"),
    [
        (None, {}, "mlp adam lr=0.001 bs=128"),  # a single run
        (None, {MLFLOW_RUN_NAME: "trial_3"}, "trial_3"),  # a trial (sweep/job.py)
        ("mine", {}, "mine"),  # mlflow.run_name=mine
    ],
)
def test_a_runs_name_is_the_configs_else_the_trials_else_what_it_trains(
    tmp_path: Path, run_name: str | None, tags: dict[str, str], expected: str
) -> None:
    previous = mlflow.get_tracking_uri()
    config = MlflowConfig(f"sqlite:///{tmp_path}/mlflow.db", "names", run_name)
    try:
        with tracking.tracked_run(config, {}, tags, "mlp adam lr=0.001 bs=128") as run:
            run_id = run.info.run_id
    finally:
        tracking.use_store(previous)
    assert mlflow.MlflowClient(config.tracking_uri).get_run(run_id).info.run_name == expected


@pytest.fixture
def evaluation_store(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """evaluate's main up to its evaluation: the store each call chose."""
    chosen: list[str] = []

    def evaluate_checkpoints(paths, files, out, mlflow_config, tta=False) -> dict[str, float]:
        chosen.append(mlflow_config.tracking_uri)
        metrics = ("test_accuracy", "test_accuracy_ci95_low", "test_accuracy_ci95_high",
                   "test_ece", "test_macro_f1")  # fmt: skip
        return dict.fromkeys(metrics, 0.5)

    monkeypatch.setattr(evaluate, "evaluate_checkpoints", evaluate_checkpoints)
    return chosen


def test_evaluate_logs_to_its_flag_else_the_store_its_checkpoint_recorded(
    trained_run: Path, evaluation_store: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    checkpoint = str(trained_run / "out" / "model.pt")
    recorded = f"sqlite:///{trained_run}/mlflow.db"
    monkeypatch.setenv(ENV, "http://env:5000")  # the checkpoint's own store comes first
    assert evaluate.main([checkpoint, "--out", str(tmp_path / "a")]) == 0
    assert evaluate.main([checkpoint, "--out", str(tmp_path / "b"),
                          "--tracking-uri", "http://flag:5000"]) == 0  # fmt: skip
    assert evaluation_store == [recorded, "http://flag:5000"]


def test_evaluate_asks_for_the_store_when_the_recorded_one_is_not_here(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import torch

    checkpoint = torch.load(trained_run / "out" / "model.pt", weights_only=True)
    checkpoint["config"]["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path}/gone/mlflow.db"
    moved = tmp_path / "moved.pt"
    torch.save(checkpoint, moved)
    assert evaluate.main([str(moved)]) == 2
    assert "which does not exist here: pass --tracking-uri" in capsys.readouterr().err
    assert not (tmp_path / "gone").exists()


def interrupt_at(where: str, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Make SQLAlchemy raise KeyboardInterrupt, as a Ctrl-C landing there would, once the
    returned list is armed (`.append(True)`): "after the query", right after a SELECT ran (its
    cursor holds rows), or "reading its rows", as the ORM starts on them."""
    from sqlalchemy.engine.default import DefaultDialect
    from sqlalchemy.orm import loading

    armed: list[bool] = []

    def fire() -> None:
        armed.pop()
        raise KeyboardInterrupt

    if where == "after the query":
        execute = DefaultDialect.do_execute

        def executed(self, cursor, statement, *args) -> None:
            execute(self, cursor, statement, *args)
            if armed and statement.startswith("SELECT"):
                fire()

        monkeypatch.setattr(DefaultDialect, "do_execute", executed)
    else:
        read = loading._instance_processor

        def reading(*args, **kwargs):
            if armed:
                fire()
            return read(*args, **kwargs)

        monkeypatch.setattr(loading, "_instance_processor", reading)
    return armed


@pytest.mark.parametrize("where", ["after the query", "reading its rows"])
def test_ctrl_c_inside_a_database_read_ends_the_run_at_once_and_stays_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Ctrl-C can land while MLflow's SQLite store reads rows (both places were seen in a
    sweep's log): the ended frames kept that read's cursor, and with it a lock on the database,
    so the run's own end waited 20 s and failed, and Ctrl-C became an ordinary error (a trial
    failed, not stopped)."""
    armed = interrupt_at(where, monkeypatch)
    config = MlflowConfig(f"sqlite:///{tmp_path}/mlflow.db", "interrupted", "run")
    with pytest.raises(KeyboardInterrupt), tracking.tracked_run(config, {}) as run:
        tracking.log_metrics({"val_accuracy": 0.5}, step=1)
        armed.append(True)
        started = time.monotonic()
        tracking.log_metrics({"val_accuracy": 0.6}, step=2)
    assert not armed  # the interrupt fired
    assert time.monotonic() - started < 10  # no wait on a lock
    ended = mlflow.MlflowClient(config.tracking_uri).get_run(run.info.run_id)
    assert ended.info.status == "FAILED"  # MLflow's word for a run that raised
