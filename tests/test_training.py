from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mnist_sweep.config import OptimizerName, Schedule, to_run_config
from mnist_sweep.data import tensor_loaders
from mnist_sweep.models import MLP
from mnist_sweep.training import (
    CHECK_EVERY,
    DivergedError,
    Step,
    evaluate,
    fit,
    make_optimizer,
    make_schedule,
    train_epoch,
)

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


def test_cosine_schedule_decays_from_the_peak_to_zero() -> None:
    optimizer = torch.optim.SGD(MLP([8, 8]).parameters(), lr=0.1)
    schedule = make_schedule(optimizer, Schedule.cosine, total_steps=100)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == 0.1 and rates == sorted(rates, reverse=True)
    assert optimizer.param_groups[0]["lr"] < 1e-6


def test_label_smoothing_reaches_the_training_loss(small_cfg) -> None:
    config = to_run_config(small_cfg)
    loaders = tensor_loaders(config.data, CPU, config.trainer.seed)
    torch.manual_seed(0)
    model = MLP(config.model.hidden_sizes)  # no dropout: train and eval mode agree
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    for smoothing in (0.0, 0.2):
        loss, _ = train_epoch(model, loaders.train, Step(frozen, label_smoothing=smoothing), CPU)
        with torch.no_grad():
            expected = (
                sum(
                    F.cross_entropy(model.logits(x), y, label_smoothing=smoothing, reduction="sum")
                    for x, y in loaders.train
                )
                / loaders.train_size
            )
        assert loss == pytest.approx(expected.item(), rel=1e-5)


def _fit_weights(config) -> tuple[torch.nn.Module, list]:
    loaders = tensor_loaders(config.data, CPU, config.trainer.seed)
    torch.manual_seed(config.trainer.seed)
    model = MLP(config.model.hidden_sizes, config.model.dropout)
    history = fit(model, loaders.train, loaders.val, config.optimizer, config.trainer, CPU)
    assert history[-1].val_accuracy == evaluate(model, loaders.val, CPU)[1]
    return model, history


def test_ema_leaves_the_model_holding_the_averaged_weights(small_cfg) -> None:
    plain, _ = _fit_weights(to_run_config(small_cfg))
    config = to_run_config(small_cfg)
    config.trainer.ema_decay = 0.9
    averaged, _ = _fit_weights(config)
    # The same seed trains the same trajectory; the EMA run ends on its average instead.
    for name, weight in plain.state_dict().items():
        if weight.is_floating_point():
            assert not torch.equal(weight, averaged.state_dict()[name]), name


def test_augmentation_is_applied_to_every_training_batch_only(small_cfg) -> None:
    config = to_run_config(small_cfg)
    loaders = tensor_loaders(config.data, CPU, config.trainer.seed)
    seen = []

    def augment(images: torch.Tensor) -> torch.Tensor:
        seen.append(len(images))
        return images

    model = MLP(config.model.hidden_sizes)
    fit(model, loaders.train, loaders.val, config.optimizer, config.trainer, CPU, augment=augment)
    assert seen == [len(labels) for _, labels in loaders.train]
