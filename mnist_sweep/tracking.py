"""MLflow: where runs go, how they are named, and what each one records."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow

from mnist_sweep.config import MlflowConfig

# MLflow's artifact download bars and "View run" links would repeat for every trial of a sweep;
# either variable set in the environment brings them back.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config to dotted keys: {"model": {"dropout": 0.2}} -> {"model.dropout": 0.2}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a local SQLite store go beside its database file; a server decides its own."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return (database.parent / "mlartifacts").resolve().as_uri()


@functools.cache
def initialize_store(tracking_uri: str) -> None:
    """Create or upgrade a SQLite store's tables under a file lock, once per process.

    Two sweep processes starting together would otherwise both run MLflow's schema migrations
    on a new database and fail ("table ... already exists").
    """
    if urlparse(tracking_uri).scheme != "sqlite":
        return
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mlflow.MlflowClient(tracking_uri).search_experiments(max_results=1)


def experiment_id(config: MlflowConfig) -> str:
    """Point MLflow at `config.tracking_uri` and return the experiment's id, creating it once."""
    initialize_store(config.tracking_uri)
    mlflow.set_tracking_uri(config.tracking_uri)
    experiment = mlflow.get_experiment_by_name(config.experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow.create_experiment(
            config.experiment_name, artifact_location=artifact_location(config.tracking_uri)
        )
    except mlflow.exceptions.MlflowException:
        # Another process of the same sweep created it first.
        return mlflow.get_experiment_by_name(config.experiment_name).experiment_id


@contextlib.contextmanager
def tracked_run(
    config: MlflowConfig, params: Mapping[str, Any], tags: Mapping[str, str] | None = None
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run with `params` logged; it ends FAILED if the body raises."""
    with mlflow.start_run(
        experiment_id=experiment_id(config), run_name=config.run_name, tags=dict(tags or {})
    ) as run:
        mlflow.log_params(dict(params))
        yield run


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log several metrics of the active run in one call."""
    mlflow.log_metrics(dict(metrics), step=step)


def log_artifacts(paths: list[Path], folder: str | None = None) -> None:
    """Copy files into the active run's artifacts (into `folder` if given)."""
    for path in paths:
        mlflow.log_artifact(str(path), folder)


SWEEP_ID = "mnist_sweep.sweep_id"
TRIAL = "mnist_sweep.trial"
ROLE = "mnist_sweep.role"
OWNER = "mnist_sweep.owner"


def sweep_runs(
    client: mlflow.MlflowClient, experiment: str, sweep_id: str, role: str, status: str = ""
) -> list[mlflow.entities.Run]:
    """Runs of one sweep: its parent (`role="sweep"`) or its trials (`role="trial"`)."""
    query = f"tags.`{SWEEP_ID}` = '{sweep_id}' AND tags.`{ROLE}` = '{role}'"
    if status:
        query += f" AND attributes.status = '{status}'"
    return client.search_runs([experiment], query, max_results=50_000)


def sweep_parent(
    client: mlflow.MlflowClient, experiment: str, sweep_id: str, create: bool = False
) -> mlflow.entities.Run | None:
    """The sweep's parent run (the oldest, should two processes have raced to create one)."""
    parents = sweep_runs(client, experiment, sweep_id, "sweep")
    if not parents and create:
        ours = client.create_run(
            experiment, run_name=f"sweep {sweep_id.rsplit('/', 1)[-1]}",
            tags={SWEEP_ID: sweep_id, ROLE: "sweep"},
        )  # fmt: skip
        parents = sweep_runs(client, experiment, sweep_id, "sweep")
        if len(parents) > 1:
            client.delete_run(ours.info.run_id)
            parents = [run for run in parents if run.info.run_id != ours.info.run_id]
    return min(parents, key=lambda run: run.info.start_time, default=None)


def client_for(config: MlflowConfig) -> tuple[mlflow.MlflowClient, str]:
    """A client of `config.tracking_uri` and the id of `config.experiment_name`."""
    experiment = experiment_id(config)
    return mlflow.MlflowClient(config.tracking_uri), experiment


def trial_tags(config: MlflowConfig, sweep_id: str, trial: str, owner: str) -> dict[str, str]:
    """Tags that nest a trial's run under its sweep's parent run in the MLflow UI."""
    client, experiment = client_for(config)
    parent = sweep_parent(client, experiment, sweep_id)
    tags = {SWEEP_ID: sweep_id, TRIAL: trial, ROLE: "trial", OWNER: owner}
    if parent is not None:
        tags["mlflow.parentRunId"] = parent.info.run_id
    return tags
