"""How fast a run goes: the device and thread count. Nothing here changes what it computes."""

from __future__ import annotations

import torch

from mnist_sweep.config import ConfigError, Device, TrainerConfig


def select_device(choice: Device) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit choice that is unavailable is an error."""
    available = {
        Device.cuda: torch.cuda.is_available(),
        Device.mps: torch.backends.mps.is_available(),
        Device.cpu: True,
    }
    if choice is Device.auto:
        choice = next(device for device, ok in available.items() if ok)
    if not available[choice]:
        allowed = ", ".join(device.value for device, ok in available.items() if ok)
        raise ConfigError(
            f"trainer.device: {choice.value} is not available here; use auto, {allowed}"
        )
    return torch.device(choice.value)


def configure(trainer: TrainerConfig) -> torch.device:
    """Apply the speed settings of `trainer` and return the device to train on."""
    if trainer.num_threads:
        torch.set_num_threads(trainer.num_threads)
    return select_device(trainer.device)
