"""The sweeper's config schema: Hydra's Optuna sweeper options plus worker liveness and
pruning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf

from mnist_sweep import objective


@dataclass
class ResumableOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "mnist_sweep.sweep.plugin.ResumableOptunaSweeper"
    # The objective's own direction (mnist_sweep/objective.py); checks.py refuses another.
    direction: Any = objective.DIRECTION
    # Trials in flight at once: a whole number, or `auto` to pack the hardware (cores //
    # trainer.num_threads on a CPU, `trials_per_device` on each GPU; sweep/packing.py).
    n_jobs: Any = 1
    trials_per_device: int = 1
    # With a database storage, each worker records a heartbeat of its running trials every
    # `heartbeat_interval` seconds; a trial silent for `grace_period` seconds is failed and
    # replaced by any worker, on any host (Optuna's heartbeat mechanism).
    heartbeat_interval: int = 10
    grace_period: int = 60
    # A trial whose worker stopped (killed, preempted, heartbeat stale, Ctrl-C) is retried with
    # its parameters from its last finished epoch, at most this many times (sweep/retry.py).
    max_retries: int = 3
    # Seconds the study storage and the MLflow tracking store get to answer before the sweep
    # starts (a server still starting is waited for; a refusal such as a wrong password is not).
    reach_timeout: float = 30.0
    # An Optuna pruner as a config with `_target_` (optuna.pruners.MedianPruner, ...) that
    # each trial's job consults after every epoch; None: every trial trains its full budget.
    pruner: Any = None


def register_schema() -> None:
    """Make `hydra/sweeper: resumable_optuna` available to conf/config.yaml's defaults list."""
    ConfigStore.instance().store(
        group="hydra/sweeper", name="resumable_optuna", node=ResumableOptunaSweeperConf,
        provider="mnist_sweep", replace=True,
    )  # fmt: skip
