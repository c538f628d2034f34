from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ValidationError

from mnist_sweep.config import (
    Architecture,
    ConfigError,
    DatasetName,
    Device,
    Loader,
    OptimizerName,
    register_schema,
    to_run_config,
)
from mnist_sweep.sweep import plugin

from tests.support import CONF_DIR, compose_config

VALID = ["mlflow.tracking_uri=sqlite:///mlflow.db"]


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group,option",
    [(group, option) for group in ("model", "optimizer", "data", "data/augment", "trainer",
                                   "mlflow", "sweep")
     for option in group_options(group)],
)  # fmt: skip
def test_every_group_option_composes_and_checks(group: str, option: str) -> None:
    config = to_run_config(compose_config([f"{group}={option}", *VALID]))
    assert getattr(config, group.split("/")[0]) is not None


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_composes_and_checks(experiment: str) -> None:
    """`python run.py +experiment=<name>`: the README's headline configs."""
    config = to_run_config(compose_config([f"+experiment={experiment}", *VALID]))
    assert config.model.arch in set(Architecture)


def test_an_experiment_switches_groups_and_still_takes_shell_overrides() -> None:
    config = to_run_config(
        compose_config(["+experiment=cnn_small", "model.channels=[8,16]", *VALID])
    )
    assert config.model.arch is Architecture.cnn and config.model.channels == [8, 16]
    assert config.data.augment.enabled


def test_cnn_sweep_searches_the_cnn_in_its_own_study() -> None:
    register_schema()
    plugin.register()
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("config", ["sweep=cnn_small", *VALID], return_hydra_config=True)
    assert cfg.model.arch == "cnn" and cfg.hydra.sweeper.study_name == "cnn_small"
    assert "model.channels" in cfg.hydra.sweeper.params
    # Inherited from sweep/mlp: storage and the keep-the-best threshold.
    assert cfg.hydra.sweeper.storage._target_ == "optuna.storages.JournalStorage"
    assert cfg.sweep.min_test_accuracy == 0.9


def test_fashion_mnist_switches_the_dataset_and_its_statistics() -> None:
    config = to_run_config(compose_config(["data=fashion_mnist", *VALID]))
    assert config.data.name is DatasetName.fashion_mnist
    assert config.data.mean != 0.1307 and config.data.batch_size == 128


def test_defaults_are_the_documented_public_keys() -> None:
    config = to_run_config(compose_config(VALID))
    assert len(config.model.hidden_sizes) >= 2
    assert config.optimizer.name is OptimizerName.adam
    assert config.optimizer.lr > 0 and config.optimizer.weight_decay >= 0
    assert config.data.loader is Loader.tensor and config.data.val_size == 5000
    assert config.trainer.device is Device.auto
    assert config.mlflow.experiment_name == "mnist_sweep"


def test_sgd_option_has_momentum() -> None:
    config = to_run_config(compose_config(["optimizer=sgd", *VALID]))
    assert config.optimizer.name is OptimizerName.sgd and config.optimizer.momentum > 0


def test_shell_overrides_reach_typed_values() -> None:
    config = to_run_config(
        compose_config(["optimizer.lr=0.01", "model.hidden_sizes=[512,256,128]", *VALID])
    )
    assert config.optimizer.lr == 0.01
    assert config.model.hidden_sizes == [512, 256, 128]


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.hidden_sizes=[512]", "model.hidden_sizes"),
        ("model.hidden_sizes=[512,0]", "model.hidden_sizes"),
        ("model.dropout=1.0", "model.dropout"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("optimizer.lr=-0.1", "optimizer.lr"),
        ("optimizer.lr=nan", "optimizer.lr"),
        ("data.batch_size=0", "data.batch_size"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("trainer.label_smoothing=1.0", "trainer.label_smoothing"),
        ("trainer.ema_decay=-0.5", "trainer.ema_decay"),
        ("data.augment.rotation=-5", "data.augment.rotation"),
        ("data.augment.translate=1.5", "data.augment.translate"),
        ("data.augment.scale=nan", "data.augment.scale"),
        ("data.augment.elastic_sigma=0", "data.augment.elastic_sigma"),
        ("model.channels=[16,32]", "model.channels"),  # on the MLP
        ("+experiment=cnn_small model.channels=[]", "model.channels"),
        ("+experiment=cnn_small model.channels=[8,8,8,8,8]", "model.channels"),
        ("+experiment=cnn_small model.kernel_size=4", "model.kernel_size"),
        ("+experiment=cnn_small model.convs_per_stage=0", "model.convs_per_stage"),
    ],
)
def test_nonsense_values_fail_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_run_config(compose_config([*override.split(), *VALID]))


@pytest.mark.parametrize(
    "override,key",
    [
        ("trainer.device=tpu", "device"),
        ("optimizer.name=rmsprop", "name"),
        ("data.batch_size=big", "batch_size"),
        ("data.loader=pandas", "loader"),
        ("data.name=cifar10", "name"),
        ("model.arch=resnet", "arch"),
    ],
)
def test_mistyped_values_fail_at_composition_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigCompositionException) as error:
        compose_config([override, *VALID])
    assert isinstance(error.value.__cause__, ValidationError)
    assert key in str(error.value.__cause__)


def test_misspelled_key_is_an_error() -> None:
    with pytest.raises(ConfigCompositionException, match=r"optimizer\.lrr"):
        compose_config(["optimizer.lrr=0.1", *VALID])


def test_unknown_optimizer_option_is_an_error() -> None:
    with pytest.raises(MissingConfigException, match="rmsprop"):
        compose_config(["optimizer=rmsprop", *VALID])


def test_an_empty_tracking_uri_is_an_error_naming_the_key() -> None:
    # What MLFLOW_TRACKING_URI set to nothing gives conf/mlflow/local.yaml.
    with pytest.raises(ConfigError, match=r"mlflow\.tracking_uri: must not be empty"):
        to_run_config(compose_config(["mlflow.tracking_uri=''"]))
