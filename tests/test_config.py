from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ValidationError

from mnist_sweep.config import ConfigError, Device, Loader, OptimizerName, to_run_config

from conftest import CONF_DIR, compose_config

VALID = ["mlflow.tracking_uri=sqlite:///mlflow.db"]


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group,option",
    [(group, option) for group in ("model", "optimizer", "data", "trainer", "mlflow")
     for option in group_options(group)],
)  # fmt: skip
def test_every_group_option_composes_and_checks(group: str, option: str) -> None:
    config = to_run_config(compose_config([f"{group}={option}", *VALID]))
    assert getattr(config, group) is not None


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
    ],
)
def test_nonsense_values_fail_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_run_config(compose_config([override, *VALID]))


@pytest.mark.parametrize(
    "override,key",
    [
        ("trainer.device=tpu", "device"),
        ("optimizer.name=rmsprop", "name"),
        ("data.batch_size=big", "batch_size"),
        ("data.loader=pandas", "loader"),
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
