"""Pruning inside a trial's job: each epoch's validation accuracy goes to the job's Optuna
trial, and training stops at the epoch where the sweep's pruner says so, or where the study
no longer counts the trial as running (another worker failed it as stale, or its sweep was
killed and a later run failed it): the study's word stands, and the job stops.

The job reaches its trial through the study's storage, by the study its sweeper told it and
its Hydra job number (the trial number: sweep/job.py), so this works wherever the job runs: in
the sweep's process, in a joblib worker, in another `python run.py -m` process or in a SLURM
job.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna
from hydra.utils import instantiate

from mnist_sweep import objective, tracking
from mnist_sweep.sweep import records
from mnist_sweep.sweep.job import Told
from mnist_sweep.sweep.liveness import OWNER, process_is_gone
from mnist_sweep.sweep.storage import make_storage
from mnist_sweep.training import EpochMetrics, StoppedEarly

log = logging.getLogger(__name__)


def make_pruner(config: Any) -> optuna.pruners.BasePruner | None:
    """An Optuna pruner from a config with `_target_`, or None when there is none."""
    if config is None:
        return None
    pruner = instantiate(config, _execution_whitelist_=("optuna.pruners.*",))
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise TypeError(f"hydra.sweeper.pruner must be an optuna.pruners class, got {pruner!r}")
    return pruner


class TrialEndedElsewhere(RuntimeError):
    """The study ended this job's trial while it trained."""


def open_study(told: Told, sweeper: Any) -> tuple[Any, optuna.Study]:
    """The storage and Optuna study a job was told, opened with the sweeper's storage and
    pruner (`sweeper` is the job's hydra.sweeper config)."""
    # A confirmation is never pruned: it measures a configuration over its whole budget.
    pruner = make_pruner(sweeper.pruner) if told.role == "trial" else None
    storage = make_storage(sweeper.storage)
    study = optuna.load_study(study_name=told.study, storage=storage,
                              pruner=pruner or optuna.pruners.NopPruner())  # fmt: skip
    return storage, study


def still_running(trial: optuna.Trial) -> bool:
    """The study still runs `trial`, and the sweep process that asked for it, if it is one of
    this machine, is alive (a job orphaned by a killed sweep stops rather than train on)."""
    running = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    ours = [other for other in running if other.number == trial.number]
    return bool(ours) and not process_is_gone(ours[0].user_attrs.get(OWNER, ""))


class Reporter:
    """After each epoch: its objective reported to `trial`; raises StoppedEarly (after tagging
    the MLflow run) when the pruner stops the trial, and TrialEndedElsewhere when the study no
    longer runs it."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def __call__(self, metrics: EpochMetrics) -> None:
        trial = self.trial
        if not still_running(trial):
            raise TrialEndedElsewhere(
                f"trial {trial.number} is no longer running in the study (another worker "
                "failed it, or its sweep process is gone); this job stops"
            )
        self.report(metrics)
        if trial.should_prune():
            log.info("Trial %d pruned at epoch %d (%s %.4f)", trial.number, metrics.epoch,
                     objective.METRIC, objective.value(metrics))  # fmt: skip
            tracking.set_tags({records.PRUNED_AT_EPOCH: str(metrics.epoch)})
            raise StoppedEarly(metrics.epoch)

    def catch_up(self, history: list[EpochMetrics]) -> None:
        """A resumed trial's epochs: those its earlier attempt trained but did not report are
        reported, and the pruner judges the last, as it would have right after training it."""
        for metrics in history[:-1]:
            self.report(metrics)
        self(history[-1])

    def report(self, metrics: EpochMetrics) -> None:
        """The epoch's objective to the trial; an epoch it has (a retry inherits its earlier
        attempts' reports: sweep/retry.py) is left as it is."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The reported value is ignored", UserWarning)
            self.trial.report(objective.value(metrics), metrics.epoch)
