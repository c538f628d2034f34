"""Pruning inside a trial's job: each epoch's validation accuracy goes to the job's Optuna
trial, and training stops at the epoch where the sweep's pruner says so.

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

from mnist_sweep import tracking
from mnist_sweep.sweep.job import is_optuna_trial
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


def current_trial() -> optuna.Trial | None:
    """The running multirun job's trial when its sweep prunes, else None."""
    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.sweeper
    if sweeper.get("pruner") is None or not is_optuna_trial(hydra_cfg):
        return None
    study = optuna.load_study(
        study_name=sweeper.study_name, storage=make_storage(sweeper.storage),
        pruner=make_pruner(sweeper.pruner),
    )  # fmt: skip
    number = hydra_cfg.job.num
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.Trial(study, trial_id)


def reporting(on_epoch: OnEpoch, trial: optuna.Trial | None) -> OnEpoch:
    """`on_epoch`, then the epoch's validation accuracy reported to `trial`; raises
    optuna.TrialPruned (after tagging the MLflow run) when the pruner stops the trial."""
    if trial is None:
        return on_epoch

    def report(metrics: EpochMetrics) -> None:
        on_epoch(metrics)
        trial.report(metrics.val_accuracy, metrics.epoch)
        if trial.should_prune():
            log.info("Trial %d pruned at epoch %d (val_accuracy %.4f)",
                     trial.number, metrics.epoch, metrics.val_accuracy)  # fmt: skip
            tracking.set_tags({tracking.PRUNED_AT_EPOCH: str(metrics.epoch)})
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
