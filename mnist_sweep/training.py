"""Optimization: the optimizer, one training pass, evaluation, and the epoch loop."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnist_sweep.config import OptimizerConfig, OptimizerName, Schedule, TrainerConfig
from mnist_sweep.models import Network

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
Augment = Callable[[torch.Tensor], torch.Tensor]
CHECK_EVERY = 50  # batches between checks that the training loss is still finite


class DivergedError(RuntimeError):
    """Training produced a non-finite loss; further epochs would be wasted."""


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float


def make_optimizer(
    params: Iterable[nn.Parameter], config: OptimizerConfig
) -> torch.optim.Optimizer:
    """The optimizer that `optimizer.name` selects, with its lr and weight decay."""
    # fused=True: one kernel per step instead of one per tensor, the same update up to rounding;
    # 1.13x faster training steps on the 2-core CPU at batch size 64
    # (benchmarks/fused_optimizer.py).
    options = {"lr": config.lr, "weight_decay": config.weight_decay, "fused": True}
    if config.name is OptimizerName.sgd:
        return torch.optim.SGD(params, momentum=config.momentum, **options)
    optimizer_class = torch.optim.AdamW if config.name is OptimizerName.adamw else torch.optim.Adam
    return optimizer_class(params, **options)


def make_schedule(
    optimizer: torch.optim.Optimizer, schedule: Schedule, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step learning-rate schedule peaking at the optimizer's lr, or None for constant."""
    if schedule is Schedule.onecycle:
        peak = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak, total_steps=total_steps)
    if schedule is Schedule.cosine:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return None


@dataclass
class Step:
    """What one training step does besides the forward and backward pass."""

    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None
    augment: Augment | None = None
    label_smoothing: float = 0.0
    ema: torch.optim.swa_utils.AveragedModel | None = None


def train_epoch(
    model: Network, batches: Batches, step: Step, device: torch.device
) -> tuple[float, float]:
    """One pass over the training batches; returns (mean loss, accuracy)."""
    optimizer = step.optimizer
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for batch, (images, labels) in enumerate(batches, 1):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if step.augment is not None:
            images = step.augment(images)
        logits = model.logits(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=step.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step.schedule is not None:
            step.schedule.step()
        if step.ema is not None:
            step.ema.update_parameters(model)
        # Summed on the device and read every CHECK_EVERY batches: a read per batch would
        # make a GPU wait for each step; a read per epoch would waste an epoch after a NaN.
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
        if batch % CHECK_EVERY == 0:
            _check_finite(loss_sum, seen)
    _check_finite(loss_sum, seen)
    return loss_sum.item() / seen, correct.item() / seen


def _check_finite(loss_sum: torch.Tensor, seen: int) -> None:
    mean_loss = loss_sum.item() / seen
    if not math.isfinite(mean_loss):
        raise DivergedError(f"training loss became {mean_loss} after {seen} samples; stopping")


@torch.no_grad()
def evaluate(model: Network, batches: Batches, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over `batches`, with dropout off."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for images, labels in batches:
        images, labels = images.to(device), labels.to(device)
        logits = model.logits(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    return loss_sum / seen, correct / seen


def make_ema(model: Network, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """A running exponential average of the weights (batch-norm statistics included)."""
    if decay == 0:
        return None
    average = torch.optim.swa_utils.get_ema_multi_avg_fn(decay)
    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=average, use_buffers=True)


class StoppedEarly(Exception):
    """Raised by an `on_epoch` hook to stop training after `epoch` (a sweep's pruner does)."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"stopped after epoch {epoch}")
        self.epoch = epoch


def fit(
    model: Network,
    train_batches: Batches,
    val_batches: Batches,
    optimizer_config: OptimizerConfig,
    trainer: TrainerConfig,
    device: torch.device,
    on_epoch: Callable[[EpochMetrics], None] = lambda metrics: None,
    augment: Augment | None = None,
    start: dict[str, Any] | None = None,
    snapshot: Callable[[dict[str, Any]], None] | None = None,
) -> list[EpochMetrics]:
    """Train for `trainer.epochs`, evaluating on the validation batches after each epoch;
    `on_epoch` may raise StoppedEarly.

    After each epoch `snapshot` gets the training state (`training_state`), before `on_epoch`;
    given such a state as `start`, training continues after its epoch exactly as it would have
    gone on. With `trainer.ema_decay` the averaged weights are the ones validated, and `model`
    ends holding them.
    """
    optimizer = make_optimizer(model.parameters(), optimizer_config)
    schedule = make_schedule(optimizer, trainer.lr_schedule, trainer.epochs * len(train_batches))
    ema = make_ema(model, trainer.ema_decay)
    step = Step(optimizer, schedule, augment, trainer.label_smoothing, ema)
    generators = random_generators(train_batches, augment)
    history = [] if start is None else restore(start, model, step, generators)
    validated = model if ema is None else ema.module
    for epoch in range(len(history) + 1, trainer.epochs + 1):
        train_loss, train_accuracy = train_epoch(model, train_batches, step, device)
        val_loss, val_accuracy = evaluate(validated, val_batches, device)
        history.append(EpochMetrics(epoch, train_loss, train_accuracy, val_loss, val_accuracy))
        if snapshot is not None:
            snapshot(training_state(history, model, step, generators))
        on_epoch(history[-1])
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
    return history


def random_generators(
    train_batches: Batches, augment: Augment | None
) -> dict[str, torch.Generator]:
    """The seeded generators a run draws from besides torch's global one (dropout)."""
    found = {"shuffle": getattr(train_batches, "generator", None),
             "augment": getattr(augment, "generator", None)}  # fmt: skip
    return {name: generator for name, generator in found.items() if generator is not None}


def training_state(
    history: list[EpochMetrics], model: Network, step: Step, generators: dict[str, torch.Generator]
) -> dict[str, Any]:
    """What continues training exactly after the last epoch of `history`."""
    random = {name: generator.get_state() for name, generator in generators.items()}
    random["torch"] = torch.get_rng_state()
    if torch.cuda.is_initialized():
        random["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "epoch": history[-1].epoch,
        "history": [asdict(epoch) for epoch in history],
        "model": model.state_dict(),
        "optimizer": step.optimizer.state_dict(),
        "schedule": None if step.schedule is None else step.schedule.state_dict(),
        "ema": None if step.ema is None else step.ema.state_dict(),
        "random": random,
    }


def restore(
    state: dict[str, Any], model: Network, step: Step, generators: dict[str, torch.Generator]
) -> list[EpochMetrics]:
    """Load `state` (training_state) into the run's objects; its history."""
    model.load_state_dict(state["model"])
    step.optimizer.load_state_dict(state["optimizer"])
    if step.schedule is not None:
        step.schedule.load_state_dict(state["schedule"])
    if step.ema is not None:
        step.ema.load_state_dict(state["ema"])
    random = state["random"]
    torch.set_rng_state(random["torch"])
    for name, generator in generators.items():
        generator.set_state(random[name])
    if "cuda" in random and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(random["cuda"])
    return [EpochMetrics(**epoch) for epoch in state["history"]]
