"""Where a study lives: the journal config, database URLs, heartbeat settings."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from mnist_sweep.sweep import liveness
from mnist_sweep.sweep.checks import check_sweeper
from mnist_sweep.sweep.errors import SweepError
from mnist_sweep.sweep.storage import database_url, make_storage

from tests.support import compose_sweeper


def test_heartbeat_settings_are_sweeper_options_with_defaults() -> None:
    default = compose_sweeper([])
    changed = compose_sweeper(["hydra.sweeper.heartbeat_interval=5"])
    assert (default.heartbeat_interval, default.grace_period) == (10, 60)
    assert changed.heartbeat_interval == 5


def test_postgresql_urls_use_psycopg_3_and_others_are_left_alone() -> None:
    assert database_url("postgresql://u@h:5/db") == "postgresql+psycopg://u@h:5/db"
    assert database_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"


def test_a_database_url_gets_optuna_heartbeats(tmp_path: Path) -> None:
    storage = make_storage(f"sqlite:///{tmp_path}/optuna.db", 2, 7)
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert (storage.heartbeat_interval, storage.grace_period) == (2, 7)
    assert liveness.heartbeat_interval(storage) == 2
    assert liveness.heartbeat_interval(optuna.storages.InMemoryStorage()) is None


def test_the_journal_config_is_instantiated(tmp_path: Path) -> None:
    config = OmegaConf.create({
        "_target_": "optuna.storages.JournalStorage",
        "log_storage": {"_target_": "optuna.storages.journal.JournalFileBackend",
                        "file_path": str(tmp_path / "journal.log")},
    })  # fmt: skip
    assert isinstance(make_storage(config, 2, 7), optuna.storages.JournalStorage)


@pytest.mark.parametrize(
    ("interval", "grace", "message"),
    [(0, 10, "heartbeat_interval=0"), (5, -1, "grace_period=-1"), (10, 10, "must exceed")],
)
def test_bad_heartbeat_settings_are_refused_by_name(
    interval: int, grace: int, message: str
) -> None:
    sweeper = compose_sweeper([f"hydra.sweeper.heartbeat_interval={interval}",
                               f"hydra.sweeper.grace_period={grace}"])  # fmt: skip
    with pytest.raises(SweepError, match=message):
        check_sweeper(sweeper, "maximize")
