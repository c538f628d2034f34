"""The job side of a sweep: which sweep and trial a Hydra job runs, as its sweeper told it.

The sweeper adds `++hydra.job.env_set.MNIST_SWEEP_JOB=<json>` to each job it launches; Hydra sets
it in the job's environment wherever the job runs (in the sweep's process, a joblib worker, a
SLURM job), and run.py passes `current(...)` to experiment.run. Hydra's job number is the
Optuna trial number (the sweeper launches each trial's job with it). A single run has none.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mnist_sweep.config import MlflowConfig
    from mnist_sweep.training import EpochMetrics

ENV = "MNIST_SWEEP_JOB"
GRID_PREFIX = "grid_"
# A confirmation's folder: the top trials' configurations trained again with new seeds, as
# trials of the study "<study>.confirm" (sweep/confirm.py).
CONFIRM_PREFIX = "confirm_"
CONFIRM_STUDY = "{}.confirm".format


@dataclass(frozen=True)
class Told:
    """What the sweeper tells each job: its sweep, and its Optuna study (None for a job of a
    plain grid, which has no study); role "trial" or "confirmation"; the CUDA device its
    packing slot pins it to (sweep/packing.py), if any."""

    sweep_id: str
    study: str | None = None
    role: str = "trial"
    device: int | None = None

    def override(self) -> str:
        """The launch override that sets it in the job's environment."""
        return f"++hydra.job.env_set.{ENV}='{json.dumps(asdict(self))}'"


@dataclass(frozen=True)
class Pruned:
    """A pruned trial's job returns this: its run stopped after `epoch` by the pruner."""

    epoch: int


@dataclass
class SweepJob:
    """A running job of a sweep: its trial's name (its output folder under the sweep's) and
    number, and the sweeper's config (its storage and pruner), to reach its Optuna trial."""

    told: Told
    trial: str
    number: int
    sweeper: Any = field(repr=False, default=None)

    def tags(self, config: MlflowConfig) -> dict[str, str]:
        """The job's MLflow tags: its sweep, its parent run, and its name."""
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        from mnist_sweep.sweep import records
        from mnist_sweep.sweep.liveness import this_process

        tags = records.trial_tags(config, self.told.sweep_id, self.trial, self.number,
                                  this_process(), self.told.role)  # fmt: skip
        if config.run_name is None:  # MLflow refuses a name given both ways
            tags[MLFLOW_RUN_NAME] = self.trial
        return tags

    def pin_device(self) -> None:
        """Make the job's CUDA device current, so that `cuda` means it (trainer.device)."""
        if self.told.device is not None:
            import torch

            torch.cuda.set_device(self.told.device)

    def after_epoch(self, metrics: EpochMetrics) -> None:
        """Report the epoch to the job's Optuna trial, if it has one (sweep/pruning.py)."""
        if self.reporter is not None:
            self.reporter(metrics)

    @functools.cached_property
    def reporter(self) -> Any:
        from mnist_sweep.sweep import pruning

        if self.told.study is None:
            return None
        return pruning.reporting(pruning.open_trial(self.told, self.number, self.sweeper))


def current(hydra_cfg: Any) -> SweepJob | None:
    """The running Hydra job's place in a sweep, or None when no sweeper launched it."""
    told = os.environ.get(ENV)
    if not told:
        return None
    folder = Path(hydra_cfg.runtime.output_dir).resolve()
    trial = folder.relative_to(Path(hydra_cfg.sweep.dir).resolve()).as_posix()
    return SweepJob(Told(**json.loads(told)), trial, hydra_cfg.job.num, hydra_cfg.sweeper)
