"""A run's training state, written after every epoch so that an interrupted run continues where
it stopped: the model, optimizer, learning-rate schedule and EMA weights, every random
generator (dropout, shuffling, augmentation), the epoch and the metric history, with the
config that computes them and the MLflow run that records them.

Written atomically (a temporary file, fsynced, then renamed over the last state), so a crash
mid-write leaves the previous epoch's state; read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mnist_sweep.config import differences

STATE_FILE = "state.pt"
FORMAT = "mnist_sweep.state/1"


class StateError(Exception):
    """A training state that cannot be resumed from (names the file and why)."""


def save(path: Path, state: Mapping[str, Any]) -> None:
    """Write `state` to `path` atomically: a reader sees the old state or the new, whole."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as file:
            torch.save({"format": FORMAT, **state}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def load(path: Path, config: Mapping[str, str]) -> dict[str, Any]:
    """The state at `path`, written by a run of `config` (config.what_it_computes); StateError
    otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StateError(
            f"{path}: no training state there (a run removes it when it finishes, "
            "unless trainer.keep_state=true)"
        ) from None
    except Exception as error:
        raise StateError(f"{path}: not a whole training state ({error})") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise StateError(f"{path}: not a training state of mnist_sweep")
    changed = differences(state["config"], config)
    if changed:
        raise StateError(f"{path} was written by a run of other settings ({changed})")
    return state


def state_file(where: str, output_dir_of_run: Any) -> Path:
    """The state file `trainer.resume` names: a file, a run's folder, or an MLflow run id whose
    folder `output_dir_of_run(run_id)` returns."""
    path = Path(where).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return path / STATE_FILE
    folder = output_dir_of_run(where)
    if folder is None:
        raise StateError(f"trainer.resume={where}: neither a run's folder nor an MLflow run id")
    return Path(folder) / STATE_FILE
