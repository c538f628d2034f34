"""Typed schema of a run's config: Hydra validates YAML and overrides against it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


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


class Loader(StrEnum):
    tensor = "tensor"
    torch = "torch"


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _positive(value: float, key: str) -> None:
    _require(math.isfinite(value) and value > 0, key, f"must be positive, got {value}")


@dataclass
class ModelConfig:
    hidden_sizes: list[int] = MISSING
    dropout: float = MISSING

    def check(self) -> None:
        hidden = list(self.hidden_sizes)
        _require(
            len(hidden) >= 2,
            "model.hidden_sizes",
            f"needs at least two hidden layers, got {hidden}",
        )
        _require(
            all(size > 0 for size in hidden),
            "model.hidden_sizes",
            f"every layer size must be positive, got {hidden}",
        )
        _require(0 <= self.dropout < 1, "model.dropout", f"must be in [0, 1), got {self.dropout}")


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
class DataConfig:
    name: str = MISSING
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

    def check(self) -> None:
        _positive(self.batch_size, "data.batch_size")
        _positive(self.eval_batch_size, "data.eval_batch_size")
        _positive(self.std, "data.std")
        _require(self.val_size > 0, "data.val_size", f"must be positive, got {self.val_size}")
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

    def check(self) -> None:
        _positive(self.epochs, "trainer.epochs")
        _require(
            self.num_threads >= 0, "trainer.num_threads", f"must be >= 0, got {self.num_threads}"
        )


@dataclass
class MlflowConfig:
    tracking_uri: str = MISSING
    experiment_name: str = MISSING
    run_name: str | None = MISSING


@dataclass
class SweepConfig:
    # The best trial is kept only if its test accuracy reaches this.
    min_test_accuracy: float = MISSING
    registered_model: str = MISSING
    alias: str = MISSING


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def check(self) -> None:
        for group in (self.model, self.optimizer, self.data, self.trainer):
            group.check()


def register_schema() -> None:
    """Make `run_schema` available to conf/config.yaml's defaults list."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig, replace=True)


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Resolve a composed config into checked dataclasses; raises ConfigError naming the key."""
    app_cfg = OmegaConf.masked_copy(cfg, list(RunConfig.__dataclass_fields__))
    typed = OmegaConf.merge(OmegaConf.structured(RunConfig), app_cfg)
    config = OmegaConf.to_object(typed)
    config.check()
    return config
