"""Retrying a trial whose worker stopped, from its last finished epoch.

A trial whose worker is gone (killed, preempted, its heartbeat stale, Ctrl-C) is failed, and
Optuna's RetryHeartbeatStaleTrialCallback queues a WAITING copy of it: same parameters, its
reported epochs inherited (the pruner judges the retry by its whole curve), and the numbers of
the attempts before it in its `retry_history`. The next `ask` of any worker runs that copy
before drawing new parameters, so a retry and its original count once toward n_trials. A
trial that failed by itself (an error in its code, a NaN objective) is told FAIL and never
comes here.

Each attempt's job records its output folder on its trial (FOLDER); a retry's job continues
from the newest training state among its earlier attempts' folders (mnist_sweep/resume.py),
under the MLflow run that state names.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from mnist_sweep.resume import STATE_FILE
from mnist_sweep.sweep.errors import describe
from mnist_sweep.sweep.liveness import OWNER, trial_id
from mnist_sweep.tracking import OUTPUT_DIR as FOLDER  # here, an attempt's, set by its job

log = logging.getLogger(__name__)
# Attributes of one attempt, not of the trial: a retry records its own.
OF_ONE_ATTEMPT = (OWNER, FOLDER)


def retry(study: optuna.Study, trial: FrozenTrial, max_retries: int) -> int | None:
    """Queue a retry of `trial`, just failed because its worker stopped; its number in the
    retry series, or None when the trial has had `max_retries` retries already."""
    earlier = earlier_attempts(trial)
    if len(earlier) >= max_retries:
        log.warning("Trial %d is not retried: it has had hydra.sweeper.max_retries=%d retries",
                    trial.number, max_retries)  # fmt: skip
        return None
    attempt = copy.deepcopy(trial)
    attempt.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in OF_ONE_ATTEMPT}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(study, attempt)
    return len(earlier) + 1


def earlier_attempts(trial: FrozenTrial) -> list[int]:
    """The numbers of the attempts before `trial` in its retry series, oldest first."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return list(RetryHeartbeatStaleTrialCallback.retry_history(trial))


def frozen(storage: Any, study: optuna.Study, number: int) -> FrozenTrial:
    """Trial `number` of `study` as the storage has it now (a live optuna.Trial does not show
    its system attributes, where Optuna keeps the retry history)."""
    return storage.get_trial(trial_id(storage, study, number))


def record_folder(trial: optuna.Trial, folder: Path) -> None:
    """Record where this attempt of `trial` writes its training state."""
    trial.set_user_attr(FOLDER, str(folder.resolve()))


def earlier_states(storage: Any, study: optuna.Study, trial: FrozenTrial) -> list[Path]:
    """The training states `trial`'s earlier attempts may have left, newest attempt first
    (an attempt that never started has none)."""
    folders = []
    for number in reversed(earlier_attempts(trial)):
        try:
            attempt = frozen(storage, study, number)
        except Exception as error:  # a state we cannot find is one we start over without
            log.warning("Trial %d's earlier attempt %d cannot be read: %s", trial.number,
                        number, describe(error))  # fmt: skip
            continue
        if FOLDER in attempt.user_attrs:
            folders.append(Path(attempt.user_attrs[FOLDER]) / STATE_FILE)
    return folders
