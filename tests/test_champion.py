"""The champion moves only to a better model on the same data, and a study's settings never
drift silently."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from mnist_sweep.config import Promote
from mnist_sweep.sweep import confirm
from mnist_sweep.sweep.keep import TAG, promote, register, sweep_alias
from mnist_sweep.tracking import use_store

from tests.support import mlflow_runs, run_sweep, states, sweep_command


@pytest.fixture
def registry(tmp_path: Path):
    """A registered model with a champion (v1: val_accuracy 0.97 on digest d, split s)."""
    uri, previous = f"sqlite:///{tmp_path}/mlflow.db", mlflow.get_tracking_uri()
    # A version's models:/ source resolves in the global store; use_store, unlike MLflow's
    # set_tracking_uri, exports nothing that later tests' subprocesses would read.
    use_store(uri)
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
    use_store(previous)


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


@pytest.mark.slow
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


def test_the_confirmed_champion_is_the_best_mean_not_the_luckiest_trial() -> None:
    study_ = optuna.create_study(direction="maximize")
    for value in (0.97, 0.96, 0.95):  # trial 0 is the luckiest single trial
        trial = study_.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        study_.tell(trial, value)
    tops = confirm.top(study_, 2)
    confirmations = optuna.create_study(direction="maximize")
    confirm.enqueue_missing(confirmations, tops, [1, 2])
    confirm.enqueue_missing(confirmations, tops, [1, 2])  # a second worker: nothing more
    assert len(confirmations.trials) == 4
    seed = optuna.distributions.CategoricalDistribution([1, 2])
    for value in (0.950, 0.952, 0.960, 0.962):  # trial 0's seeds, then trial 1's
        trial = confirmations.ask({"x": tops[0].distributions["x"], confirm.SEED: seed})
        confirmations.tell(trial, value)
    chosen, other = confirm.candidates(confirmations, tops)
    assert chosen.trial.number == 1 and chosen.values == {1: 0.960, 2: 0.962}
    assert chosen.mean == pytest.approx(0.961) and chosen.spread == pytest.approx(0.001414, 1e-3)
    assert other.trial.number == 0


@pytest.mark.slow
def test_a_confirmed_sweep_keeps_the_best_mean_and_says_so(data_root: Path, tmp_path: Path) -> None:
    # 300 training images: seeds move validation accuracy by points, so they decide.
    done = run_sweep(tmp_path, data_root, "data.train_subset=300", "hydra.sweeper.n_trials=3",
                     "sweep.confirm.top_k=2", "sweep.confirm.seeds=2",
                     "sweep.min_test_accuracy=0.1")  # fmt: skip
    output = (done.stdout + done.stderr).splitlines()
    [line] = [line for line in output if "Confirmed: trial" in line]
    chosen, luckiest = (int(n) for n in re.findall(r"trial (\d+)", line))
    assert chosen != luckiest, line
    assert len(states(tmp_path)) == 3  # the confirmations are not trials of the search
    client, confirmations = mlflow_runs(tmp_path, "confirmation")
    _, [parent] = mlflow_runs(tmp_path, "sweep")
    assert len(confirmations) == 4
    assert {run.data.tags[MLFLOW_PARENT_RUN_ID] for run in confirmations} == {parent.info.run_id}
    assert {run.info.status for run in confirmations} == {"FINISHED"}
    assert sorted(run.data.params["trainer.seed"] for run in confirmations) == ["1", "1", "2", "2"]
    champion = client.get_model_version_by_alias("mnist_sweep_mlp", "champion")
    assert champion.run_id in {
        run.info.run_id
        for run in mlflow_runs(tmp_path, "trial")[1]
        if run.data.tags["mnist_sweep.trial_number"] == str(chosen)
    }
    per_seed = json.loads(champion.tags[TAG("per_seed")])
    assert sorted(per_seed) == ["1", "2"]
    assert all(set(seed) == {"val_accuracy", "test_accuracy"} for seed in per_seed.values())
    mean = sum(seed["val_accuracy"] for seed in per_seed.values()) / 2
    assert float(champion.tags[TAG("selection_value")]) == pytest.approx(mean)
    assert champion.tags[TAG("seeds")] == "1,2"
    assert parent.data.metrics["confirmed_mean_val_accuracy"] == pytest.approx(mean)
    table = client.download_artifacts(parent.info.run_id, "confirmations.md", str(tmp_path))
    assert Path(table).read_text().count("\n") == 2 + 4
