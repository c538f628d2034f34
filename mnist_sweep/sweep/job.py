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
    """A running job of a sweep: its trial's name (its output folder under the sweep's),
    number and output folder, and the sweeper's config (its storage and pruner), to reach its
    Optuna trial."""

    told: Told
    trial: str
    number: int
    folder: Path
    sweeper: Any = field(repr=False, default=None)

    def tags(self, config: MlflowConfig) -> dict[str, str]:
        """The job's MLflow tags: its sweep, its parent run, and its name."""
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        from mnist_sweep.sweep import records
        from mnist_sweep.sweep.liveness import this_process

        tags = records.trial_tags(config, self.told.sweep_id, self.trial, self.number,
                                  this_process(), self.told.role)  # fmt: skip
        if self.optuna_trial is not None:
            tags.update(records.retry_tags(self.frozen_trial()))
        if config.run_name is None:  # MLflow refuses a name given both ways
            tags[MLFLOW_RUN_NAME] = self.trial
        return tags

    def pin_device(self) -> None:
        """Make the job's CUDA device current, so that `cuda` means it (trainer.device)."""
        if self.told.device is not None:
            import torch

            torch.cuda.set_device(self.told.device)

    def states(self) -> list[Path]:
        """Training states this job may continue from, newest first: its own folder's (its
        SLURM job was requeued) if there is one, then its trial's earlier attempts' (a retried
        trial: sweep/retry.py). Records this attempt's folder on its trial."""
        from optuna.trial import TrialState

        from mnist_sweep.resume import STATE_FILE
        from mnist_sweep.sweep import retry
        from mnist_sweep.sweep.pruning import TrialEndedElsewhere

        own = self.folder / STATE_FILE
        if self.optuna_trial is None:  # a grid's job: its folder is new to each grid
            return [own] if own.exists() else []
        trial = self.frozen_trial()
        if trial.state is not TrialState.RUNNING:
            raise TrialEndedElsewhere(
                f"trial {self.number} is {trial.state.name} in the study: its sweep no longer "
                "waits for this job (a SLURM job requeued after it finished?); it stops"
            )
        # Its own folder's state counts only if this trial wrote it (this job ran before and
        # was requeued), not a study of the same name that was deleted and started again.
        ran_here = trial.user_attrs.get(retry.FOLDER) == str(self.folder)
        retry.record_folder(self.optuna_trial, self.folder)
        own_state = [own] if ran_here and own.exists() else []
        return own_state + retry.earlier_states(*self.study, trial)

    def resumed(self, history: list[EpochMetrics]) -> None:
        """The run continues a training state of `history`: its epochs go to the trial."""
        if self.optuna_trial is not None:
            self.reporter.catch_up(history)

    def after_epoch(self, metrics: EpochMetrics) -> None:
        """Report the epoch to the job's Optuna trial, if it has one (sweep/pruning.py)."""
        if self.optuna_trial is not None:
            self.reporter(metrics)

    @functools.cached_property
    def study(self) -> tuple[Any, Any]:
        """The storage and Optuna study of the job's trial."""
        from mnist_sweep.sweep import pruning

        return pruning.open_study(self.told, self.sweeper)

    @functools.cached_property
    def optuna_trial(self) -> Any:
        """The job's running Optuna trial; None for a job of a plain grid."""
        import optuna

        from mnist_sweep.sweep.liveness import trial_id

        if self.told.study is None:
            return None
        storage, study = self.study
        return optuna.Trial(study, trial_id(storage, study, self.number))

    def frozen_trial(self) -> Any:
        """The job's trial as the study has it now, with its retry history."""
        from mnist_sweep.sweep import retry

        return retry.frozen(*self.study, self.number)

    @functools.cached_property
    def reporter(self) -> Any:
        from mnist_sweep.sweep import pruning

        return pruning.Reporter(self.optuna_trial)


def current(hydra_cfg: Any) -> SweepJob | None:
    """The running Hydra job's place in a sweep, or None when no sweeper launched it."""
    told = os.environ.get(ENV)
    if not told:
        return None
    folder = Path(hydra_cfg.runtime.output_dir).resolve()
    trial = folder.relative_to(Path(hydra_cfg.sweep.dir).resolve()).as_posix()
    return SweepJob(Told(**json.loads(told)), trial, hydra_cfg.job.num, folder,
                    hydra_cfg.sweeper)  # fmt: skip
