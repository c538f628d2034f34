"""What a sweep checks before it runs a trial or records anything: every sweeper key, the run's
config, and that its study storage and its MLflow tracking store answer.

The stores get `hydra.sweeper.reach_timeout` seconds to answer (a server still starting is
waited for); an error that no wait can mend (a wrong password, a missing database, a file that
is not a store) ends the sweep at once. Nothing is created here: a journal file, a SQLite store
or a study only comes into being once every check has passed.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from omegaconf import DictConfig, OmegaConf

from mnist_sweep.masking import masked
from mnist_sweep.sweep.errors import SweepError, describe
from mnist_sweep.sweep.packing import AUTO

T = TypeVar("T")
# A study name becomes a folder (multirun/<name>) and a value in MLflow's filter strings.
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
TRACKING_SCHEMES = {"", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql",
                    "databricks"}  # fmt: skip


def require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise SweepError(f"hydra.sweeper.{key}={value}: {rule}")


def check_sweeper(sweeper: DictConfig, objective_direction: str) -> None:
    """Every sweeper key a trial depends on, each error naming the key."""
    is_int = lambda value: isinstance(value, int) and not isinstance(value, bool)  # noqa: E731
    require(is_int(sweeper.n_trials) and sweeper.n_trials >= 1, "n_trials", sweeper.n_trials,
            "must be a whole number >= 1")  # fmt: skip
    require((is_int(sweeper.n_jobs) and sweeper.n_jobs >= 1) or sweeper.n_jobs == AUTO,
            "n_jobs", sweeper.n_jobs, "must be a whole number >= 1 (trials in flight at "
            "once) or auto (as many as the cores or GPUs serve)")  # fmt: skip
    require(is_int(sweeper.trials_per_device) and sweeper.trials_per_device >= 1,
            "trials_per_device", sweeper.trials_per_device,
            "must be a whole number >= 1 (trials on each GPU with n_jobs=auto)")  # fmt: skip
    rate = sweeper.max_failure_rate
    require(isinstance(rate, (int, float)) and 0 <= rate <= 1, "max_failure_rate", rate,
            "must be between 0 and 1 (the share of n_trials that may fail)")  # fmt: skip
    direction = sweeper.direction
    require(direction == objective_direction, "direction", direction,
            f"the objective is maximized ('{objective_direction}'); drop the override")  # fmt: skip
    name = sweeper.study_name
    safe = isinstance(name, str) and bool(STUDY_NAME.fullmatch(name)) and ".." not in name
    require(safe, "study_name", name, "use letters, digits, '_', '-' and '.' (it names a folder)")
    for key in ("heartbeat_interval", "grace_period"):
        require(is_int(sweeper[key]) and sweeper[key] > 0, key, sweeper[key],
                "must be a whole number of seconds > 0")  # fmt: skip
    require(is_int(sweeper.max_retries) and sweeper.max_retries >= 0, "max_retries",
            sweeper.max_retries, "must be a whole number >= 0 (retries of a trial whose "
            "worker stopped)")  # fmt: skip
    # The schema's float refuses another type as the config is composed.
    require(sweeper.reach_timeout > 0, "reach_timeout", sweeper.reach_timeout,
            "must be a number of seconds > 0")  # fmt: skip
    require(sweeper.grace_period > sweeper.heartbeat_interval, "grace_period",
            sweeper.grace_period, f"must exceed hydra.sweeper.heartbeat_interval="
            f"{sweeper.heartbeat_interval}, or live trials would be failed")  # fmt: skip


def check_tracking_uri(uri: str) -> None:
    scheme = urlsplit(uri).scheme
    if scheme not in TRACKING_SCHEMES or (scheme in {"http", "https"} and not urlsplit(uri).netloc):
        raise SweepError(
            f"mlflow.tracking_uri={masked(uri)}: not a tracking URI; use sqlite:///path/mlflow.db, "
            "http(s)://host:port of an mlflow server, or a database URL"
        )


def check_data_root(root: str | None) -> None:
    """data.root must be a folder we can write (the extracted dataset goes there)."""
    if root is None:
        return
    path = Path(root)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.R_OK | os.W_OK | os.X_OK):
        raise SweepError(f"data.root={root}: {existing} is not a folder this user can write")


def reach(
    what: str, attempt: Callable[[], T], transient: Callable[[BaseException], bool], timeout: float
) -> T:
    """`attempt()`, tried again for up to `timeout` seconds while its error is `transient`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return attempt()
        except Exception as error:
            if not transient(error) or time.monotonic() > deadline:
                waited = f" (tried for {timeout:g} s)" if transient(error) else ""
                raise SweepError(f"{what}: {describe(error)}{waited}") from error
        time.sleep(1.0)


def is_unreachable(error: BaseException) -> bool:
    """A server that does not answer (yet), as opposed to one that answers no."""
    import sqlalchemy

    if isinstance(error, sqlalchemy.exc.OperationalError):
        # psycopg gives an SQLSTATE for answers (bad password 28P01, no database 3D000) and
        # none when it could not talk to the server at all.
        return getattr(error.orig, "sqlstate", None) is None
    text = str(error).lower()
    return any(sign in text for sign in ("connection refused", "timed out", "max retries"))


def probe_database(url: str, timeout: float) -> None:
    """Connect once to a study database, creating nothing in it."""
    import sqlalchemy

    from mnist_sweep.sweep.storage import connect_timeout, database_url

    engine = sqlalchemy.create_engine(database_url(url), **connect_timeout(url))
    try:
        reach(f"hydra.sweeper.storage={masked(url)}",
              lambda: engine.connect().close(), is_unreachable, timeout)  # fmt: skip
    finally:
        engine.dispose()


def probe_storage(storage: Any, timeout: float) -> None:
    """The study's storage: a database URL is connected to, a journal's folder looked at."""
    if OmegaConf.is_config(storage):
        path = OmegaConf.select(storage, "log_storage.file_path")
        if path is not None:
            probe_journal(path)
    elif storage is not None:
        probe_database(str(storage), timeout)


def probe_journal(path: str) -> None:
    folder = Path(path).parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise SweepError(f"hydra.sweeper.storage: the journal's folder {folder} is not writable")


@contextlib.contextmanager
def mlflow_without_retries() -> Iterator[None]:
    """MLflow's HTTP client retries a dead server for minutes; the probe waits reach_timeout."""
    saved = {key: os.environ.get(key) for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                                                   "MLFLOW_HTTP_REQUEST_TIMEOUT")}  # fmt: skip
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def probe_tracking(uri: str, timeout: float) -> None:
    """Reach the MLflow tracking store once, creating nothing (a new SQLite store is made
    later, once every check has passed)."""
    check_tracking_uri(uri)
    what = f"mlflow.tracking_uri={masked(uri)}"
    if uri.startswith("sqlite:///"):
        probe_sqlite(what, Path(uri.removeprefix("sqlite:///")))
        return
    import mlflow

    with mlflow_without_retries():
        reach(what, lambda: mlflow.MlflowClient(uri).search_experiments(max_results=1),
              is_unreachable, timeout)  # fmt: skip


def probe_sqlite(what: str, database: Path) -> None:
    """An existing file must be an MLflow store; a new one needs a writable folder.

    Opened for writing (never created): a writer killed mid-commit leaves a hot journal, which
    SQLite rolls back on opening, as MLflow's own connection would; read-only, it is refused
    ("attempt to write a readonly database") and a sound store looks broken."""
    import sqlite3

    if not database.exists():
        folder = next(p for p in database.parents if p.exists())
        if not os.access(folder, os.W_OK):
            raise SweepError(f"{what}: {folder} is not writable")
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=rw", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error as error:
        raise SweepError(f"{what}: {database} is not a readable SQLite store ({error})") from error
    if tables and "experiments" not in tables:
        raise SweepError(f"{what}: {database} is a SQLite file but not an MLflow store")
