"""MLflow: where runs go, how they are named, and what each one records."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import mlflow

from mnist_sweep.config import MlflowConfig

T = TypeVar("T")

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


def log_metrics(
    metrics: Mapping[str, float],
    step: int | None = None,
    model_id: str | None = None,
    dataset: mlflow.data.Dataset | None = None,
) -> None:
    """Log several metrics of the active run in one call (linked to a logged model and the
    dataset they were measured on, if given)."""
    mlflow.log_metrics(dict(metrics), step=step, model_id=model_id, dataset=dataset)


def set_tags(tags: Mapping[str, str]) -> None:
    """Tag the active run."""
    mlflow.set_tags(dict(tags))


def end_run(status: str) -> None:
    """End the active run with `status` (FINISHED, FAILED or KILLED)."""
    mlflow.end_run(status)


def log_artifacts(paths: list[Path], folder: str | None = None) -> None:
    """Copy files into the active run's artifacts (into `folder` if given)."""
    for path in paths:
        mlflow.log_artifact(str(path), folder)


def log_model(checkpoint: Path) -> str:
    """Log `checkpoint` as the active run's MLflow Model; returns its model id."""
    from mnist_sweep.serving import log_pyfunc

    return log_pyfunc(checkpoint).model_id


def log_dataset(name: str, file_digests: Mapping[str, str], source: str) -> mlflow.data.Dataset:
    """Record the raw files the active run read, by one digest of their SHA-256s, as its
    training dataset input (the UI's Dataset column)."""
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.data.meta_dataset import MetaDataset

    # The sha256sum listing of the files, so `sha256sum SHA256SUMS` gives the same digest;
    # cut to 16 hex digits: the store keeps 36 characters.
    listing = "".join(f"{digest}  {file}\n" for file, digest in sorted(file_digests.items()))
    digest = hashlib.sha256(listing.encode()).hexdigest()[:16]
    # resolve_dataset_source would warn that a local path fits two registered source types.
    local = get_dataset_source_from_json(json.dumps({"uri": source}), "local")
    dataset = MetaDataset(local, name=name, digest=digest)
    # A sweep's workers log the same dataset into one experiment, often at the same moment.
    once_more_if_raced(mlflow.log_input, dataset, context="training")
    return dataset


def once_more_if_raced(write: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`write(*args, **kwargs)`, repeated once if the store refused it as a bad request.

    MLflow's SQL store adds a tag or a dataset that a read found missing: of two processes
    adding the same one at once, one fails on the duplicate key (a BAD_REQUEST). The row
    exists by then, so the second try updates or links it. A request that is really bad fails
    again, with its own message.
    """
    try:
        return write(*args, **kwargs)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code != "BAD_REQUEST":
            raise
        return write(*args, **kwargs)


# What a run is: a single run has none; "trial", "confirmation", "sweep" (a sweep's parent
# run, mnist_sweep/sweep/records.py) or "evaluation" (mnist_sweep/evaluate.py).
ROLE = "mnist_sweep.role"


def client_for(config: MlflowConfig) -> tuple[mlflow.MlflowClient, str]:
    """A client of `config.tracking_uri` and the id of `config.experiment_name`."""
    experiment = experiment_id(config)
    return mlflow.MlflowClient(config.tracking_uri), experiment
