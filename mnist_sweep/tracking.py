"""MLflow: where runs go, how they are named, and what each one records.

Where the store is: one rule (`store`) for every command.

1. The command's own setting wins: `mlflow.tracking_uri=...` for `python run.py` (and every
   trial of a sweep), `--tracking-uri` for `python -m mnist_sweep.predict` and
   `python -m mnist_sweep.evaluate`. evaluate counts the store its checkpoint's training run
   recorded as its own setting, so that the evaluation run lands beside the run it names.
2. Else `MLFLOW_TRACKING_URI` from the environment: MLflow's own convention.
3. Else `sqlite:///mlflow.db`, in the folder the command was started in (run.py writes it
   out absolute, `sqlite:///<launch dir>/mlflow.db`, conf/mlflow/local.yaml, so that a
   checkpoint's record of it holds from any folder).

MLflow's global store (what `mlflow.start_run` and `models:/` URIs use) is set in one place,
`use_store`, when a run starts (`tracked_run`) or a sweep connects (`client_for`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gc
import hashlib
import inspect
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import mlflow
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from mnist_sweep.config import DatasetName, MlflowConfig, RunConfig

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


STORE_ENVIRONMENT = "MLFLOW_TRACKING_URI"
DEFAULT_STORE = "sqlite:///mlflow.db"


def store(explicit: str | None = None, recorded: str | None = None) -> str:
    """Where the MLflow store is (the module's rule): `explicit`, else the store a checkpoint
    `recorded`, else MLFLOW_TRACKING_URI, else ./mlflow.db."""
    return explicit or recorded or os.environ.get(STORE_ENVIRONMENT) or DEFAULT_STORE


def use_store(tracking_uri: str) -> None:
    """Make `tracking_uri` MLflow's global store in this process (mlflow.start_run, models:/
    URIs). mlflow.set_tracking_uri also exports it as MLFLOW_TRACKING_URI; that is undone, so
    that `store` and child processes still see only what the user set."""
    exported = os.environ.get(STORE_ENVIRONMENT)
    mlflow.set_tracking_uri(tracking_uri)
    if exported is None:
        os.environ.pop(STORE_ENVIRONMENT, None)
    else:
        os.environ[STORE_ENVIRONMENT] = exported


# MLflow's UI tells training experiments from GenAI ones by this tag (MLflow 3.17 reads it only
# with its workflow switch off: there the sidebar's "Model training" switch, or
# ?workflowType=machine_learning in the URL, shows the runs).
EXPERIMENT_KIND, TRAINING = "mlflow.experimentKind", "custom_model_development"


def experiment_id(config: MlflowConfig) -> str:
    """The id of `config.experiment_name` in `config.tracking_uri`, created once and marked as an
    experiment of training runs."""
    initialize_store(config.tracking_uri)
    client = mlflow.MlflowClient(config.tracking_uri)
    experiment = client.get_experiment_by_name(config.experiment_name)
    if experiment is None:
        try:
            return client.create_experiment(
                config.experiment_name,
                artifact_location=artifact_location(config.tracking_uri),
                tags={EXPERIMENT_KIND: TRAINING},
            )
        except mlflow.exceptions.MlflowException:
            # Another process of the same sweep created it first.
            experiment = client.get_experiment_by_name(config.experiment_name)
    if EXPERIMENT_KIND not in experiment.tags:  # made before the tag was
        once_more_if_raced(
            client.set_experiment_tag, experiment.experiment_id, EXPERIMENT_KIND, TRAINING
        )
    return experiment.experiment_id


def run_name(config: RunConfig) -> str:
    """What a single run is, as its MLflow name: `mlp adam lr=0.001 bs=128` (the dataset first
    when it is not MNIST)."""
    dataset = "" if config.data.name is DatasetName.mnist else f"{config.data.name.value} "
    return (
        f"{dataset}{config.model.arch.value} {config.optimizer.name.value} "
        f"lr={config.optimizer.lr:.3g} bs={config.data.batch_size}"
    )


@contextlib.contextmanager
def tracked_run(
    config: MlflowConfig,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    name: str | None = None,
    run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run in `config`'s store with `params` logged; it ends FAILED if the body
    raises, Ctrl-C included (`release_interrupted`). Its name: `config.run_name`, else a name
    in `tags` (a trial's), else `name`, else MLflow's random one. With `run_id`, that run goes
    on (a resumed run): params it has already logged stay as they are."""
    tags = dict(tags or {})
    if config.run_name is not None or MLFLOW_RUN_NAME in tags:
        name = config.run_name  # MLflow refuses a name given both ways
    experiment = experiment_id(config)
    use_store(config.tracking_uri)
    if run_id is not None:
        logged = mlflow.MlflowClient(config.tracking_uri).get_run(run_id).data.params
        params = {key: value for key, value in params.items() if key not in logged}
        name = None  # it has its name
    with mlflow.start_run(run_id=run_id, experiment_id=experiment, run_name=name,
                          tags=tags) as run:  # fmt: skip
        try:
            mlflow.log_params(dict(params))
            yield run
        except BaseException as error:
            release_interrupted(error)
            raise


def release_interrupted(error: BaseException) -> None:
    """Let go of what an interrupt (Ctrl-C, or SIGTERM raised as Ctrl-C) holds in the frames it
    passed through, which have ended: its traceback stops at the frames still running.

    Ctrl-C can land inside a query of MLflow's SQLite store, and the ended frames then keep
    that query's cursor open (through their locals and closures): its lock on the database
    file made every later write wait MLflow's 20 s busy timeout and fail, the run's own end
    first, which turned the interrupt into an ordinary error. An ordinary exception keeps its
    whole traceback: the store rolled its query back.
    """
    if isinstance(error, Exception) or error.__traceback__ is None:
        return
    running, frame = set(), inspect.currentframe()
    while frame is not None:
        running.add(frame)
        frame = frame.f_back
    last = error.__traceback__
    while last.tb_next is not None and last.tb_next.tb_frame in running:
        last = last.tb_next
    last.tb_next = None
    gc.collect()  # the ended frames may be in reference cycles


def output_dir_of(config: MlflowConfig, run_id: str) -> str | None:
    """The output folder of MLflow run `run_id` (its OUTPUT_DIR tag), None if there is no
    such run in `config`'s store."""
    try:
        run = mlflow.MlflowClient(config.tracking_uri).get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None
    return run.data.tags.get(OUTPUT_DIR)


def log_missing_epochs(history: list[dict[str, Any]]) -> int:
    """Log the epochs of `history` that the active run lacks (a resumed run's last epoch may
    have been saved but not logged); the number of epochs in `history`."""
    client = mlflow.MlflowClient()
    run_id = mlflow.active_run().info.run_id
    logged = {metric.step for metric in client.get_metric_history(run_id, "val_accuracy")}
    for epoch in history:
        if epoch["epoch"] not in logged:
            values = {key: value for key, value in epoch.items() if key != "epoch"}
            mlflow.log_metrics(values, step=epoch["epoch"])
    return len(history)


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
OUTPUT_DIR = "mnist_sweep.output_dir"  # where the run writes (its training state: resume.py)
TORCH_THREADS = "mnist_sweep.torch_threads"  # torch's thread count as the run trained


def client_for(config: MlflowConfig) -> tuple[mlflow.MlflowClient, str]:
    """A client of `config.tracking_uri` and the id of `config.experiment_name`; the store
    becomes MLflow's global one too (a registered version's models:/ source resolves there)."""
    experiment = experiment_id(config)
    use_store(config.tracking_uri)
    return mlflow.MlflowClient(config.tracking_uri), experiment
