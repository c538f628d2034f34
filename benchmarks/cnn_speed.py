"""Training-step time of the two CNNs (and a wider strong one): channels-last vs the default
layout, and what batch augmentation adds to a step.

    python benchmarks/cnn_speed.py [--batch-size 128] [--steps 30]

Prints milliseconds per training step (forward, backward, fused Adam) with random images,
medians of 3 repeats, and the implied seconds per MNIST epoch (55,000 training images).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from mnist_sweep.augment import BatchAugment
from mnist_sweep.config import AugmentConfig
from mnist_sweep.models import CNN

CONF = Path(__file__).resolve().parents[1] / "conf"
TRAIN_IMAGES = 55_000


def options(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path))


# conf/model/<name>.yaml, with overrides
VARIANTS = {
    "cnn_small": ("cnn_small", {}),
    "cnn_strong": ("cnn_strong", {}),
    "cnn_strong channels=[32,64,128]": ("cnn_strong", {"channels": [32, 64, 128]}),
}


def cnn(variant: str) -> CNN:
    name, overrides = VARIANTS[variant]
    knobs = {**options(CONF / "model" / f"{name}.yaml"), **overrides}
    knobs.pop("arch")
    return CNN(**knobs)


def step_ms(step: Callable[[], None], steps: int) -> float:
    for _ in range(3):
        step()
    times = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - started) / steps * 1000)
    return statistics.median(times)


def training_step(
    model: CNN, batch: int, layout: torch.memory_format, augment=None
) -> Callable[[], None]:
    model = model.to(memory_format=layout)
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    images, labels = torch.randn(batch, 784), torch.randint(0, 10, (batch,))

    def step() -> None:
        x = images if augment is None else augment(images)
        x = x.reshape(-1, 1, 28, 28).contiguous(memory_format=layout)
        loss = F.cross_entropy(model.layers(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    batch = args.batch_size
    torch.manual_seed(0)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, batch size {batch}")  # fmt: skip
    affine = options(CONF / "data" / "augment" / "affine.yaml")
    augment = BatchAugment(AugmentConfig(**affine), torch.device("cpu"), 0)
    per_epoch = TRAIN_IMAGES / batch / 1000
    for name in VARIANTS:
        default = step_ms(training_step(cnn(name), batch, torch.contiguous_format), args.steps)
        last = step_ms(training_step(cnn(name), batch, torch.channels_last), args.steps)
        augmented = step_ms(
            training_step(cnn(name), batch, torch.channels_last, augment), args.steps
        )
        print(f"{name}: default layout {default:.1f} ms/step ({default * per_epoch:.1f} s/epoch), "
              f"channels-last {last:.1f} ms ({last * per_epoch:.1f} s/epoch): "
              f"{default / last:.2f}x faster; with affine augmentation {augmented:.1f} ms "
              f"(+{(augmented / last - 1) * 100:.0f}%)")  # fmt: skip


if __name__ == "__main__":
    main()
