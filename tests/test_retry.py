"""Retrying a trial whose worker stopped (mnist_sweep/sweep/retry.py), on an in-memory study."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mnist_sweep.sweep import liveness, retry
from mnist_sweep.sweep.checks import check_sweeper
from mnist_sweep.sweep.errors import SweepError

from tests.support import compose_sweeper


def stopped_trial(study: optuna.Study, folder: Path) -> optuna.trial.FrozenTrial:
    """A trial that reported two epochs, then lost its worker and was failed."""
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    trial.set_user_attr(liveness.OWNER, "host:1")
    retry.record_folder(trial, folder)
    trial.report(0.5, 1)
    trial.report(0.6, 2)
    assert liveness.fail(study, trial.number)
    return study.get_trials()[trial.number]


def test_a_stopped_trial_is_queued_again_with_its_params_and_reports(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    first = stopped_trial(study, tmp_path / "trial_0")
    assert retry.retry(study, first, max_retries=3) == 1
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].params == first.params
    assert waiting[0].intermediate_values == {1: 0.5, 2: 0.6}  # the pruner sees the whole curve
    # Who ran it and where are the first attempt's own; the retry records its own.
    assert not {liveness.OWNER, retry.FOLDER} & set(waiting[0].user_attrs)

    again = study.ask()  # a retry runs before any new draw
    retry.record_folder(again, tmp_path / "trial_1")
    again = study.get_trials()[again.number]
    assert again.number == waiting[0].number and retry.earlier_attempts(again) == [0]
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, direction="maximize")
    first = stopped_trial(study, tmp_path / "trial_0")
    retry.retry(study, first, max_retries=1)
    again = retry.frozen(storage, study, study.ask().number)
    assert retry.earlier_states(storage, study, again) == [tmp_path / "trial_0" / "state.pt"]


def test_retries_stop_at_max_retries(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    trial = stopped_trial(study, tmp_path / "trial_0")
    for attempt in (1, 2):
        assert retry.retry(study, trial, max_retries=2) == attempt
        trial = stopped_trial_again(study)
    assert retry.earlier_attempts(trial) == [0, 1]
    assert retry.retry(study, trial, max_retries=2) is None
    assert not study.get_trials(states=(TrialState.WAITING,))
    assert retry.retry(study, trial, max_retries=0) is None


def stopped_trial_again(study: optuna.Study) -> optuna.trial.FrozenTrial:
    trial = study.ask()
    assert liveness.fail(study, trial.number)
    return study.get_trials()[trial.number]


@pytest.mark.parametrize("value", ["-1", "1.5", "many"])
def test_a_bad_max_retries_is_refused_by_name(value: str) -> None:
    # The schema's int refuses another type as the config is composed; checks.py the rest.
    with pytest.raises(Exception, match="max_retries") as error:
        check_sweeper(compose_sweeper([f"hydra.sweeper.max_retries={value}"]), "maximize")
    if value == "-1":
        assert error.type is SweepError and "must be a whole number >= 0" in str(error.value)
