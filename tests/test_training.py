from __future__ import annotations

import pytest
import torch

from mnist_sweep.config import OptimizerName, to_run_config
from mnist_sweep.data import tensor_loaders
from mnist_sweep.models import MLP
from mnist_sweep.training import CHECK_EVERY, DivergedError, fit, make_optimizer

CPU = torch.device("cpu")


def short_fit(config, epochs: int = 2):
    config.trainer.epochs = epochs
    torch.manual_seed(config.trainer.seed)
    loaders = tensor_loaders(config.data, CPU, config.trainer.seed)
    model = MLP(config.model.hidden_sizes, config.model.dropout)
    return fit(model, loaders.train, loaders.val, config.optimizer, config.trainer, CPU)


def test_a_short_seeded_run_on_a_subset_lowers_the_loss(small_cfg) -> None:
    history = short_fit(to_run_config(small_cfg), epochs=3)
    assert history[-1].train_loss < history[0].train_loss
    assert history[-1].val_loss < history[0].val_loss
    assert history[-1].val_accuracy > 0.6  # chance is 0.1


def test_same_config_and_seed_give_the_same_metrics(small_cfg) -> None:
    first = short_fit(to_run_config(small_cfg))
    second = short_fit(to_run_config(small_cfg))
    assert first == second
    other = to_run_config(small_cfg)
    other.trainer.seed = 1
    assert short_fit(other) != first


def test_a_diverging_run_stops_within_the_epoch_with_a_clear_error(small_cfg) -> None:
    config = to_run_config(small_cfg)
    config.optimizer.lr = 1e30
    config.data.train_subset, config.data.batch_size = 20_000, 10  # 2,000 batches an epoch
    with pytest.raises(DivergedError, match="loss became") as error:
        short_fit(config, epochs=5)
    seen = int(error.value.args[0].split(" after ")[1].split()[0])
    assert seen <= CHECK_EVERY * 10  # stopped after 50 batches, not at the end of the epoch


@pytest.mark.parametrize(
    "name,expected",
    [(OptimizerName.adam, torch.optim.Adam), (OptimizerName.adamw, torch.optim.AdamW),
     (OptimizerName.sgd, torch.optim.SGD)],
)  # fmt: skip
def test_optimizer_name_selects_the_optimizer(small_cfg, name, expected) -> None:
    config = to_run_config(small_cfg).optimizer
    config.name, config.momentum = name, 0.5
    optimizer = make_optimizer(MLP([8, 8]).parameters(), config)
    assert type(optimizer) is expected
    assert optimizer.param_groups[0]["lr"] == config.lr
