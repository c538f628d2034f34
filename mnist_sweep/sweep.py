"""What a sweep records and keeps: its MLflow parent run, summary, and the best model.

`SweepCallback` is a Hydra callback (conf/config.yaml lists it); it runs in the process that
started `python run.py -m`, before the first and after the last trial.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from mnist_sweep import sweep_report, tracking
from mnist_sweep.config import MlflowConfig, SweepConfig, to_run_config
from mnist_sweep.sweeper import process_is_gone, this_process

log = logging.getLogger(__name__)


@dataclass
class SweepJob:
    """Where a multirun job belongs: its sweep, and its trial's name (its output folder)."""

    sweep_id: str
    trial: str


def sweep_id(hydra_cfg: DictConfig) -> str:
    """The study name when the sweeper has one, else the sweep folder."""
    return hydra_cfg.sweeper.get("study_name") or str(Path(hydra_cfg.sweep.dir).resolve())


def current_job() -> SweepJob | None:
    """The running Hydra job's sweep, or None outside a multirun."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return SweepJob(sweep_id(hydra_cfg), Path(hydra_cfg.runtime.output_dir).name)


def job_tags(config: MlflowConfig, job: SweepJob | None) -> dict[str, str]:
    if job is None:
        return {}
    return tracking.trial_tags(config, job.sweep_id, job.trial, this_process())


class SweepCallback(Callback):
    """Opens the sweep's parent run; at the end, logs the summary and keeps the best model."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        client, experiment = tracking.client_for(to_run_config(config).mlflow)
        identity = sweep_id(config.hydra)
        tracking.sweep_parent(client, experiment, identity, create=True)
        for run in tracking.sweep_runs(client, experiment, identity, "trial", "RUNNING"):
            if process_is_gone(run.data.tags.get(tracking.OWNER, "")):
                log.warning("Marking MLflow run %s FAILED: its process is gone", run.info.run_id)
                client.set_terminated(run.info.run_id, "FAILED")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        run_config = to_run_config(config)
        client, experiment = tracking.client_for(run_config.mlflow)
        identity = sweep_id(config.hydra)
        parent = tracking.sweep_parent(client, experiment, identity, create=True)
        trials = tracking.sweep_runs(client, experiment, identity, "trial", "FINISHED")
        sweep_report.log_summary(client, parent.info.run_id, trials, config.hydra)
        keep_best(client, trials, run_config.sweep, Path(config.hydra.sweep.dir) / "best")
        client.set_terminated(parent.info.run_id, "FINISHED")


def best_trial(
    trials: list[mlflow.entities.Run], min_test_accuracy: float
) -> mlflow.entities.Run | None:
    """The highest validation accuracy among trials whose test accuracy clears the bar."""
    eligible = [
        run for run in trials if run.data.metrics.get("test_accuracy", 0.0) >= min_test_accuracy
    ]
    return max(eligible, key=lambda run: run.data.metrics["val_accuracy"], default=None)


def keep_best(
    client: mlflow.MlflowClient,
    trials: list[mlflow.entities.Run],
    config: SweepConfig,
    folder: Path,
) -> mlflow.entities.Run | None:
    """Copy the best trial's model, config and metrics to `folder` and register the model."""
    best = best_trial(trials, config.min_test_accuracy)
    if best is None:
        log.warning(
            "No trial reached test_accuracy >= %.4f among %d finished trials; kept nothing",
            config.min_test_accuracy, len(trials),
        )  # fmt: skip
        return None
    with tempfile.TemporaryDirectory() as download:
        for name in ("model.pt", "config.yaml"):
            local = client.download_artifacts(best.info.run_id, name, download)
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(local, folder / name)
    summary = {"run_id": best.info.run_id, "trial": best.data.tags.get(tracking.TRIAL),
               **best.data.metrics}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(summary, indent=2))
    version = register(client, best, config)
    log.info(
        "Kept trial %s (val_accuracy %.4f, test_accuracy %.4f) in %s; registered as %s v%s @%s",
        summary["trial"], best.data.metrics["val_accuracy"], best.data.metrics["test_accuracy"],
        folder, config.registered_model, version, config.alias,
    )  # fmt: skip
    return best


def register(client: mlflow.MlflowClient, run: mlflow.entities.Run, config: SweepConfig) -> str:
    """Register the run's model.pt in the Model Registry and point the alias at it."""
    if not client.search_registered_models(f"name = '{config.registered_model}'"):
        client.create_registered_model(config.registered_model)
    same_run = client.search_model_versions(
        f"name = '{config.registered_model}' AND run_id = '{run.info.run_id}'"
    )
    version = same_run[0] if same_run else client.create_model_version(
        config.registered_model, f"{run.info.artifact_uri}/model.pt", run.info.run_id
    )  # fmt: skip
    client.set_registered_model_alias(config.registered_model, config.alias, version.version)
    return version.version
