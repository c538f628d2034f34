"""Where a sweep's Optuna study lives: a journal file (the default) or a database, and how
its operations ride out a database that goes away for a moment."""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
from hydra.utils import instantiate
from omegaconf import OmegaConf

log = logging.getLogger(__name__)
T = TypeVar("T")
# A database back within this time loses nothing: a trial's report, its result, its heartbeat
# are tried again. It matches the default grace_period, after which other workers would fail
# the trial anyway.
STORAGE_RETRY_S = 60.0
TRUSTED_STORAGES = ("optuna.storages.*", "mnist_sweep.sweep.journal.HealingJournalFileBackend")


def database_url(url: str) -> str:
    """`postgresql://` through psycopg 3 (the dependency); SQLAlchemy would pick psycopg2."""
    scheme, separator, rest = url.partition("://")
    if scheme == "postgresql" and separator:
        return f"postgresql+psycopg://{rest}"
    return url


def make_storage(
    storage: Any,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    on_stale: Callable | None = None,
) -> Any:
    """An Optuna storage from `hydra.sweeper.storage`.

    A config with `_target_` (JournalStorage) is instantiated; a database URL becomes an
    RDBStorage recording a heartbeat every `heartbeat_interval` seconds of each running trial,
    which goes stale after `grace_period` seconds of silence and is then passed to `on_stale`
    (see liveness.py).
    """
    if OmegaConf.is_config(storage):
        return instantiate(storage, _execution_whitelist_=TRUSTED_STORAGES)
    if storage is None:
        return None
    return rdb_storage(
        database_url(str(storage)),
        # A database that restarted leaves dead connections in the pool: test before use.
        engine_kwargs={"pool_pre_ping": True, **connect_timeout(storage)},
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        heartbeat_stale_trial_callback=on_stale,
    )


def rdb_storage(url: str, attempts: int = 5, **options: Any) -> Any:
    """A PatientRDBStorage, tolerating workers that start together on a new database: all of
    them create Optuna's tables, and all but one fail with a duplicate key; they try again."""
    import sqlalchemy

    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return PatientRDBStorage(url, **options)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts:
                raise
            time.sleep(attempt * random.uniform(0.2, 0.6))


def storage_name(storage: Any) -> str:
    """How errors name a storage: the journal's file, or the database URL, password masked."""
    from mnist_sweep.masking import masked

    if OmegaConf.is_config(storage):
        return str(OmegaConf.select(storage, "log_storage.file_path", default="the journal"))
    return masked(str(storage))


def connect_timeout(url: Any) -> dict[str, Any]:
    """PostgreSQL connections give up after 5 s (libpq waits forever by default), so a
    database that went away is retried rather than hung on."""
    return {"connect_args": {"connect_timeout": 5}} if str(url).startswith("postgresql") else {}


def is_transient(error: BaseException) -> bool:
    """A storage error that a later try may not meet: the database is away or restarting."""
    import sqlalchemy

    return isinstance(
        error, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError)
    )


_patience = threading.local()


def patient(method: Callable[..., T]) -> Callable[..., T]:
    """A storage method that waits out a database outage (retried)."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> T:
        if getattr(_patience, "waiting", False):  # a public method calling a private one
            return method(self, *args, **kwargs)
        _patience.waiting = True
        try:
            return retried(f"The study's {method.__name__}", method, self, *args, **kwargs)
        finally:
            _patience.waiting = False

    return call


class PatientRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose every call waits up to STORAGE_RETRY_S for a database that
    went away: asking for a trial, its params, an epoch's report, the pruner's question, a
    result, a heartbeat. RDBStorage itself fails at the first lost connection, and a study's
    operations reach it through Optuna's cache, which this subclass keeps."""


# Besides the public methods, the private ones that Optuna's storage cache calls on it.
CACHE_CALLS = ("_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials",
               "_get_stale_trial_ids")  # fmt: skip
for _name, _method in vars(optuna.storages.RDBStorage).items():
    if callable(_method) and (not _name.startswith("_") or _name in CACHE_CALLS):
        setattr(PatientRDBStorage, _name, patient(_method))


def retried(what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`call(*args, **kwargs)`, tried again for STORAGE_RETRY_S while the database is away."""
    from mnist_sweep.sweep.errors import describe

    deadline, pause = time.monotonic() + STORAGE_RETRY_S, 0.5
    while True:
        try:
            result = call(*args, **kwargs)
        except Exception as error:
            if not is_transient(error) or time.monotonic() > deadline:
                raise
            if pause == 0.5:
                log.warning("%s: the study's database is unreachable (%s); trying again for "
                            "up to %.0f s", what, describe(error), STORAGE_RETRY_S)  # fmt: skip
            time.sleep(pause)
            pause = min(pause * 2, 5.0)
            continue
        if pause > 0.5:
            log.info("%s: the study's database answers again", what)
        return result
