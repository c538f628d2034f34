"""Where a sweep's Optuna study lives: a journal file (the default) or a database."""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf


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
        return instantiate(storage, _execution_whitelist_=("optuna.storages.*",))
    if storage is None:
        return None
    for name, value in (("heartbeat_interval", heartbeat_interval), ("grace_period", grace_period)):
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"hydra.sweeper.{name}={value!r}: must be a positive whole number")
    if heartbeat_interval and grace_period and grace_period <= heartbeat_interval:
        raise ValueError(
            f"hydra.sweeper.grace_period={grace_period} must exceed "
            f"hydra.sweeper.heartbeat_interval={heartbeat_interval}: a live trial would be failed"
        )
    return rdb_storage(
        database_url(str(storage)),
        # A database that restarted leaves dead connections in the pool: test before use.
        engine_kwargs={"pool_pre_ping": True},
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        heartbeat_stale_trial_callback=on_stale,
    )


def rdb_storage(url: str, attempts: int = 5, **options: Any) -> Any:
    """Optuna's RDBStorage, tolerating workers that start together on a new database: all of
    them create Optuna's tables, and all but one fail with a duplicate key; they try again."""
    import optuna
    import sqlalchemy

    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **options)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts:
                raise
            time.sleep(attempt * random.uniform(0.2, 0.6))
