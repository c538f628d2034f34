"""The sweep's kept model: the best eligible trial, copied out and registered."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.entities import LoggedModel
from mlflow.entities.model_registry import ModelVersion

from mnist_sweep import tracking
from mnist_sweep.config import SweepConfig
from mnist_sweep.serving import CHECKPOINT_IN_MODEL

log = logging.getLogger(__name__)


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
    logged = logged_model(client, best)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download:
        shutil.copy(client.download_artifacts(best.info.run_id, "config.yaml", download), folder)
        model = mlflow.artifacts.download_artifacts(
            f"{logged.artifact_location}/{CHECKPOINT_IN_MODEL}", dst_path=download,
            tracking_uri=client.tracking_uri,
        )  # fmt: skip
        shutil.copy(model, folder / "model.pt")
    summary = {"run_id": best.info.run_id, "trial": best.data.tags.get(tracking.TRIAL),
               **best.data.metrics}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(summary, indent=2))
    version = register(client, best, logged.model_id, config)
    log.info(
        "Kept trial %s (val_accuracy %.4f, test_accuracy %.4f) in %s; registered as %s v%s @%s",
        summary["trial"], best.data.metrics["val_accuracy"], best.data.metrics["test_accuracy"],
        folder, config.registered_model, version, config.alias,
    )  # fmt: skip
    return best


def logged_model(client: mlflow.MlflowClient, run: mlflow.entities.Run) -> LoggedModel:
    """The MLflow Model that `run` logged (tracking.log_model)."""
    models = client.search_logged_models(
        [run.info.experiment_id], f"source_run_id = '{run.info.run_id}'"
    )
    if not models:
        raise LookupError(f"MLflow run {run.info.run_id} logged no model, so none can be kept")
    return models[0]


def register(
    client: mlflow.MlflowClient, run: mlflow.entities.Run, model_id: str, config: SweepConfig
) -> str:
    """Register the run's logged model in the Model Registry and point the alias at it.

    Workers of one sweep that end together may register the same run at once: each accepts
    the registered model another created, and of the versions they made of the run, all keep
    the first (numbers only grow, so whoever made a later one sees the earlier).
    """
    name = config.registered_model
    if not client.search_registered_models(f"name = '{name}'"):
        try:
            client.create_registered_model(name)
        except mlflow.exceptions.MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    query = f"name = '{name}' AND run_id = '{run.info.run_id}'"
    versions = client.search_model_versions(query)
    if not versions:
        ours = client.create_model_version(
            name, f"models:/{model_id}", run.info.run_id, model_id=model_id
        )
        versions = client.search_model_versions(query)
        if first(versions).version != ours.version:
            client.delete_model_version(name, ours.version)
    version = first(versions).version
    client.set_registered_model_alias(name, config.alias, version)
    return version


def first(versions: list[ModelVersion]) -> ModelVersion:
    return min(versions, key=lambda version: int(version.version))
