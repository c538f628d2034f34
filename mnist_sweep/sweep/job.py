"""Which sweep and trial the running Hydra job belongs to, and the MLflow tags that say so."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mnist_sweep.config import MlflowConfig

GRID_PREFIX = "grid_"
# A confirmation's folder: the top trials' configurations trained again with new seeds, as
# trials of the study "<study>.confirm" (sweep/confirm.py).
CONFIRM_PREFIX = "confirm_"
CONFIRM_STUDY = "{}.confirm".format


@dataclass
class SweepJob:
    """Where a multirun job belongs: its sweep, its trial's name (its output folder) and number
    (Hydra's job number, which the sweeper makes the Optuna trial number), and whether it is
    a trial of the Optuna study or a job of a plain grid (which has no study)."""

    sweep_id: str
    trial: str
    number: int
    is_trial: bool = True
    role: str = "trial"  # or "confirmation"

    def study_name(self, hydra_cfg: DictConfig) -> str:
        """The Optuna study this job's trial belongs to."""
        name = hydra_cfg.sweeper.study_name
        return CONFIRM_STUDY(name) if self.role == "confirmation" else name


def sweep_id(hydra_cfg: DictConfig) -> str:
    """The study name when the sweeper has one, else the sweep folder."""
    return hydra_cfg.sweeper.get("study_name") or str(Path(hydra_cfg.sweep.dir).resolve())


def current_job() -> SweepJob | None:
    """The running Hydra job's sweep, or None outside a multirun.

    A plain grid's jobs run in <sweep dir>/grid_<time>/<job number> (the sweeper names the
    folder): the grid is a sweep of its own, apart from the study.
    """
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    folder = Path(hydra_cfg.runtime.output_dir)
    if folder.parent.name.startswith(GRID_PREFIX):
        grid = folder.parent.name
        return SweepJob(f"{sweep_id(hydra_cfg)}/{grid}", f"{grid}/{folder.name}",
                        hydra_cfg.job.num, is_trial=False)  # fmt: skip
    role = "confirmation" if folder.name.startswith(CONFIRM_PREFIX) else "trial"
    return SweepJob(sweep_id(hydra_cfg), folder.name, hydra_cfg.job.num, role=role)


def job_tags(config: MlflowConfig, job: SweepJob | None) -> dict[str, str]:
    """A trial's MLflow tags: its sweep, its parent run, and its name (its trial's folder)."""
    if job is None:
        return {}
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    from mnist_sweep.sweep import records
    from mnist_sweep.sweep.liveness import this_process

    tags = records.trial_tags(config, job.sweep_id, job.trial, job.number, this_process(),
                              job.role)  # fmt: skip
    if config.run_name is None:  # MLflow refuses a name given both ways
        tags[MLFLOW_RUN_NAME] = job.trial
    return tags
