"""Typed schema of a run's config: Hydra validates YAML and overrides against it."""

from __future__ import annotations

import json
import math
import os
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NoReturn

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

# Keys that change only how fast or where a run goes, or what it keeps, not what it computes
# (device and threads: floating-point noise at most; eval_batch_size: how many images are
# scored at once): a study's fingerprint and a resumed run's state ignore them.
NOT_COMPARED = ("trainer.device", "trainer.num_threads", "trainer.resume", "trainer.keep_state",
                "data.eval_batch_size", "data.root", "data.source_dir", "data.download",
                "mlflow.", "sweep.")  # fmt: skip
SHOWN = 4  # differing keys named in a message


def what_it_computes(flat: Mapping[str, Any]) -> dict[str, str]:
    """The keys of a flattened run config that decide what the run computes, values as JSON."""
    return {key: json.dumps(value) for key, value in flat.items()
            if not key.startswith(NOT_COMPARED)}  # fmt: skip


def differences(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """`key: then -> now` for the first SHOWN keys whose values differ, "" if none does."""
    changed = [f"{key}: {recorded.get(key, '(absent)')} -> {now.get(key, '(absent)')}"
               for key in sorted(recorded.keys() | now.keys())
               if recorded.get(key) != now.get(key)]  # fmt: skip
    more = f" and {len(changed) - SHOWN} more" if len(changed) > SHOWN else ""
    return "; ".join(changed[:SHOWN]) + more


class ConfigError(ValueError):
    """A config value that type-checks but makes no sense (names the key)."""


class OptimizerName(StrEnum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Schedule(StrEnum):
    constant = "constant"
    onecycle = "onecycle"
    cosine = "cosine"


class Architecture(StrEnum):
    mlp = "mlp"
    cnn = "cnn"


class DatasetName(StrEnum):
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"


class Loader(StrEnum):
    tensor = "tensor"
    torch = "torch"


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _positive(value: float, key: str) -> None:
    _require(math.isfinite(value) and value > 0, key, f"must be positive, got {value}")


# MNIST and Fashion-MNIST both have 60,000 training images, the validation split among them.
TRAIN_IMAGES = 60_000
# 28 -> 14 -> 7 -> 3 -> 1 pixels: a CNN has room for four 2x2 poolings.
MAX_CNN_STAGES = 4


@dataclass
class ModelConfig:
    arch: Architecture = MISSING
    # mlp: the hidden layers (at least two); cnn: the fully connected layers after the convolutions.
    hidden_sizes: list[int] = MISSING
    dropout: float = MISSING
    # cnn only: output channels of each stage; every stage ends in a 2x2 max-pool.
    channels: list[int] = field(default_factory=list)
    convs_per_stage: int = 1
    kernel_size: int = 3

    def check(self) -> None:
        hidden = list(self.hidden_sizes)
        _require(
            all(size > 0 for size in hidden),
            "model.hidden_sizes",
            f"every layer size must be positive, got {hidden}",
        )
        _require(0 <= self.dropout < 1, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        if self.arch is Architecture.mlp:
            _require(
                len(hidden) >= 2,
                "model.hidden_sizes",
                f"an MLP needs at least two hidden layers, got {hidden}",
            )
            _require(
                not self.channels, "model.channels", "is for arch=cnn; the MLP has no convolutions"
            )
        else:
            self._check_cnn()

    def _check_cnn(self) -> None:
        channels = list(self.channels)
        _require(
            1 <= len(channels) <= MAX_CNN_STAGES and all(c > 0 for c in channels),
            "model.channels",
            f"needs 1 to {MAX_CNN_STAGES} positive stage widths, got {channels}",
        )
        _require(
            self.convs_per_stage >= 1,
            "model.convs_per_stage",
            f"must be >= 1, got {self.convs_per_stage}",
        )
        _require(
            self.kernel_size >= 1 and self.kernel_size % 2 == 1,
            "model.kernel_size",
            f"must be a positive odd number (same padding), got {self.kernel_size}",
        )


@dataclass
class OptimizerConfig:
    name: OptimizerName = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    # Used by sgd only; adam and adamw ignore it.
    momentum: float = MISSING

    def check(self) -> None:
        _positive(self.lr, "optimizer.lr")
        _require(
            self.weight_decay >= 0,
            "optimizer.weight_decay",
            f"must be >= 0, got {self.weight_decay}",
        )
        _require(
            0 <= self.momentum < 1, "optimizer.momentum", f"must be in [0, 1), got {self.momentum}"
        )


@dataclass
class AugmentConfig:
    """Random affine and elastic distortion of training batches; every 0 switches one off."""

    rotation: float = 0.0  # degrees either way
    translate: float = 0.0  # fraction of the image side either way
    scale: float = 0.0  # relative zoom either way
    shear: float = 0.0  # degrees either way
    elastic_alpha: float = 0.0  # displacement strength in pixels (Simard et al. 2003)
    elastic_sigma: float = 4.0  # smoothness of the displacement field in pixels

    def check(self) -> None:
        for key in ("rotation", "translate", "scale", "shear", "elastic_alpha"):
            value = getattr(self, key)
            _require(
                math.isfinite(value) and value >= 0,
                f"data.augment.{key}",
                f"must be >= 0, got {value}",
            )
        _require(self.rotation <= 180, "data.augment.rotation", "must be at most 180 degrees")
        _require(self.translate < 1, "data.augment.translate", "must be below 1 (the image side)")
        _require(self.scale < 1, "data.augment.scale", "must be below 1 (zoom to nothing)")
        _require(self.shear < 90, "data.augment.shear", "must be below 90 degrees")
        _positive(self.elastic_sigma, "data.augment.elastic_sigma")

    @property
    def enabled(self) -> bool:
        return any((self.rotation, self.translate, self.scale, self.shear, self.elastic_alpha))


@dataclass
class DataConfig:
    name: DatasetName = MISSING
    # null: a per-user cache folder (mnist_sweep.data.default_data_root).
    root: str | None = MISSING
    # null: the copy shipped inside the package.
    source_dir: str | None = MISSING
    download: bool = MISSING
    mean: float = MISSING
    std: float = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    val_size: int = MISSING
    split_seed: int = MISSING
    drop_last: bool = MISSING
    loader: Loader = MISSING
    # Trains on the first N training images only (after the validation split); for smoke runs.
    train_subset: int | None = MISSING
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def check(self) -> None:
        self.augment.check()
        _positive(self.batch_size, "data.batch_size")
        _positive(self.eval_batch_size, "data.eval_batch_size")
        _positive(self.std, "data.std")
        _require(
            0 < self.val_size < TRAIN_IMAGES,
            "data.val_size",
            f"must be between 1 and {TRAIN_IMAGES - 1} (the training images), got {self.val_size}",
        )
        if self.train_subset is not None:
            _positive(self.train_subset, "data.train_subset")


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    seed: int = MISSING
    lr_schedule: Schedule = MISSING
    device: Device = MISSING
    # 0 keeps torch's default (one thread per core); only changes speed.
    num_threads: int = MISSING
    label_smoothing: float = 0.0
    # Evaluate and save an exponential moving average of the weights; 0 switches it off.
    ema_decay: float = 0.0
    # Continue an interrupted run: its folder, its state.pt, or its MLflow run id (resume.py).
    resume: str | None = None
    # Keep the last epoch's training state (state.pt) once the run has finished.
    keep_state: bool = False

    def check(self) -> None:
        _positive(self.epochs, "trainer.epochs")
        _require(
            0 <= self.label_smoothing < 1,
            "trainer.label_smoothing",
            f"must be in [0, 1), got {self.label_smoothing}",
        )
        _require(
            0 <= self.ema_decay < 1, "trainer.ema_decay", f"must be in [0, 1), got {self.ema_decay}"
        )
        _require(
            self.num_threads >= 0, "trainer.num_threads", f"must be >= 0, got {self.num_threads}"
        )


@dataclass
class MlflowConfig:
    # Where runs go: the rule of mnist_sweep/tracking.py, spelled out in conf/mlflow/local.yaml.
    tracking_uri: str = MISSING
    experiment_name: str = MISSING
    # null: a single run is named for what it trains (tracking.run_name), a trial for its folder.
    run_name: str | None = MISSING

    def check(self) -> None:
        _require(
            bool(self.tracking_uri.strip()),
            "mlflow.tracking_uri",
            "must not be empty (is MLFLOW_TRACKING_URI set to nothing?)",
        )
        _require(bool(self.experiment_name.strip()), "mlflow.experiment_name", "must not be empty")


class Promote(StrEnum):
    if_better = "if_better"  # only over a worse champion measured on the same data and split
    always = "always"
    never = "never"


@dataclass
class ConfirmConfig:
    # The top_k configurations of the search trained again with `seeds` new seeds each; the
    # champion is the best mean. 0 switches confirmation off.
    top_k: int = 0
    seeds: int = 3

    def check(self) -> None:
        _require(self.top_k >= 0, "sweep.confirm.top_k", f"must be >= 0, got {self.top_k}")
        _require(
            self.seeds >= 2,
            "sweep.confirm.seeds",
            f"must be >= 2 (a mean and a spread), got {self.seeds}",
        )


@dataclass
class SweepConfig:
    # The best trial is kept only if its test accuracy reaches this.
    min_test_accuracy: float = MISSING
    registered_model: str = MISSING
    alias: str = MISSING
    # When the kept version takes `alias` from the current holder (docs/design.md).
    promote: Promote = Promote.if_better
    confirm: ConfirmConfig = field(default_factory=ConfirmConfig)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def check(self) -> None:
        for group in (self.model, self.optimizer, self.data, self.trainer, self.mlflow,
                      self.sweep.confirm):  # fmt: skip
            group.check()


def register_schema() -> None:
    """Make `run_schema` available to conf/config.yaml's defaults."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig, replace=True)


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Resolve a composed config into checked dataclasses; raises ConfigError naming the key."""
    app_cfg = OmegaConf.masked_copy(cfg, list(RunConfig.__dataclass_fields__))
    typed = OmegaConf.merge(OmegaConf.structured(RunConfig), app_cfg)
    config = OmegaConf.to_object(typed)
    config.check()
    return config


def exit_with(error: ConfigError) -> NoReturn:
    """End the process with the one line that names the key (and its traceback with
    HYDRA_FULL_ERROR=1, as Hydra does for its own config errors)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        traceback.print_exception(error)
    raise SystemExit(f"Error in the config: {error}")
