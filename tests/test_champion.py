"""The champion moves only to a better model on the same data, and a study's settings never
drift silently."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from mnist_sweep.config import Promote
from mnist_sweep.sweep.keep import TAG, promote, register, sweep_alias

from sweeps import mlflow_runs, run_sweep, states, sweep_command


@pytest.fixture
def registry(tmp_path: Path):
    """A registered model with a champion (v1: val_accuracy 0.97 on digest d, split s)."""
    uri, previous = f"sqlite:///{tmp_path}/mlflow.db", mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)  # a version's models:/ source resolves in the global store
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("champion")

    def version(value: float, digest: str = "d", split: str = "s"):
        run = client.create_run(experiment)
        model = client.create_logged_model(experiment, source_run_id=run.info.run_id)
        made = register(client, run, model.model_id, "digits")
        tags = {"selection_value": repr(value), "dataset_digest": digest, "val_split": split}
        for key, tag in tags.items():
            client.set_model_version_tag("digits", made.version, TAG(key), tag)
        return made

    assert promote(client, version(0.97), "champion", Promote.if_better)  # none yet: it takes it
    yield client, version
    mlflow.set_tracking_uri(previous)


def champion(client: mlflow.MlflowClient) -> str:
    return str(client.get_model_version_by_alias("digits", "champion").version)


def test_a_worse_model_does_not_take_the_champion_and_says_why(registry, caplog) -> None:
    client, version = registry
    worse = version(0.90)
    with caplog.at_level("INFO"):
        assert not promote(client, worse, "champion", Promote.if_better)
    assert champion(client) == "1"
    assert "@champion stays on digits v1: v2's val_accuracy 0.9000 does not beat its 0.9700" in (
        caplog.text
    )


def test_a_better_model_takes_it_and_always_or_never_override_the_rule(registry) -> None:
    client, version = registry
    assert promote(client, version(0.98), "champion", Promote.if_better)
    assert champion(client) == "2"
    assert not promote(client, version(0.99), "champion", Promote.never)
    assert champion(client) == "2"
    assert promote(client, version(0.50), "champion", Promote.always)
    assert champion(client) == "4"


@pytest.mark.parametrize("other", [{"digest": "fashion"}, {"split": "other split"}])
def test_a_model_measured_on_other_data_is_not_comparable(registry, caplog, other) -> None:
    client, version = registry
    with caplog.at_level("INFO"):
        assert not promote(client, version(0.999, **other), "champion", Promote.if_better)
    assert champion(client) == "1" and "is not comparable" in caplog.text


def test_each_sweep_has_an_alias_of_its_own() -> None:
    assert sweep_alias("mlp") == "best_mlp"
    assert sweep_alias("mlp.v2/grid_20261201-101010") == "best_mlp_v2_grid_20261201-101010"


def test_a_resumed_study_refuses_other_settings_and_accepts_speed_only_changes(
    data_root: Path, tmp_path: Path
) -> None:
    import subprocess

    run_sweep(tmp_path, data_root, "hydra.sweeper.n_trials=1", "sweep.min_test_accuracy=0.5")
    before = (tmp_path / "optuna_journal.log").read_bytes()
    done = subprocess.run(sweep_command(data_root, "hydra.sweeper.n_trials=2", "trainer.epochs=2"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 1
    assert lines[-1].startswith(
        "Study mlp was created with other settings (trainer.epochs: 1 -> 2)"
    )
    assert "hydra.sweeper.study_name=mlp-2" in lines[-1]
    assert (tmp_path / "optuna_journal.log").read_bytes() == before  # nothing was added
    assert len(mlflow_runs(tmp_path, "trial")[1]) == 1
    run_sweep(tmp_path, data_root, "hydra.sweeper.n_trials=2", "trainer.num_threads=1",
              "data.eval_batch_size=500", "sweep.min_test_accuracy=0.5")  # fmt: skip
    assert len(states(tmp_path)) == 2
