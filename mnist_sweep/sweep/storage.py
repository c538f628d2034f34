"""Where a sweep's Optuna study lives."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf


def make_storage(storage: Any) -> Any:
    """An Optuna storage URL as is; a config with `_target_` (JournalStorage) instantiated."""
    if OmegaConf.is_config(storage):
        return instantiate(storage, _execution_whitelist_=("optuna.storages.*",))
    return storage
