"""Pruning inside a trial's job: each epoch's validation accuracy goes to the job's Optuna
trial, and training stops at the epoch where the sweep's pruner says so, or where the study
no longer counts the trial as running (another worker failed it as stale, or its sweep was
killed and a later run failed it): the study's word stands, and the job stops.

The job reaches its trial through the study's storage (Hydra's job number is the trial
number), so this works wherever the job runs: in the sweep's process, in a joblib worker, in
another `python run.py -m` process or in a SLURM job.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from mnist_sweep import objective, tracking
from mnist_sweep.sweep import records
from mnist_sweep.sweep.job import SweepJob
from mnist_sweep.sweep.storage import make_storage
from mnist_sweep.training import EpochMetrics

log = logging.getLogger(__name__)
OnEpoch = Callable[[EpochMetrics], None]


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


def current_trial(job: SweepJob | None) -> optuna.Trial | None:
    """The running job's Optuna trial, or None outside the study (a single run, a grid)."""
    if job is None or not job.is_trial:
        return None
    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.sweeper
    # A confirmation is never pruned: it measures a configuration over its whole budget.
    pruner = make_pruner(sweeper.pruner) if job.role == "trial" else None
    study = optuna.load_study(
        study_name=job.study_name(hydra_cfg), storage=make_storage(sweeper.storage),
        pruner=pruner or optuna.pruners.NopPruner(),
    )  # fmt: skip
    # Study._storage and _study_id are private: Optuna has no public way to get a running
    # trial by its number in another process than the one that asked for it.
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, job.number)
    return optuna.Trial(study, trial_id)


def still_running(trial: optuna.Trial) -> bool:
    """The study still runs `trial`, and the sweep process that asked for it, if it is one of
    this machine, is alive (a job orphaned by a killed sweep stops rather than train on)."""
    from mnist_sweep.sweep.liveness import OWNER, process_is_gone

    running = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    ours = [other for other in running if other.number == trial.number]
    return bool(ours) and not process_is_gone(ours[0].user_attrs.get(OWNER, ""))


def reporting(on_epoch: OnEpoch, trial: optuna.Trial | None) -> OnEpoch:
    """`on_epoch`, then the epoch's validation accuracy reported to `trial`; raises
    optuna.TrialPruned (after tagging the MLflow run) when the pruner stops the trial, and
    TrialEndedElsewhere when the study no longer runs it."""
    if trial is None:
        return on_epoch

    def report(metrics: EpochMetrics) -> None:
        on_epoch(metrics)
        if not still_running(trial):
            raise TrialEndedElsewhere(
                f"trial {trial.number} is no longer running in the study (another worker "
                "failed it, or its sweep process is gone); this job stops"
            )
        trial.report(objective.value(metrics), metrics.epoch)
        if trial.should_prune():
            log.info("Trial %d pruned at epoch %d (%s %.4f)", trial.number, metrics.epoch,
                     objective.METRIC, objective.value(metrics))  # fmt: skip
            tracking.set_tags({records.PRUNED_AT_EPOCH: str(metrics.epoch)})
            raise optuna.TrialPruned(f"pruned at epoch {metrics.epoch}")

    return report


@contextlib.contextmanager
def ends_killed_when_pruned() -> Iterator[None]:
    """End the active MLflow run KILLED (not FAILED) if the block raises optuna.TrialPruned;
    the exception goes on to the sweeper, which tells the trial PRUNED."""
    try:
        yield
    except optuna.TrialPruned:
        tracking.end_run("KILLED")
        raise
