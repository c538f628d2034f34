"""What a run's per-epoch training state costs: milliseconds to write it and its size.

    python benchmarks/state_cost.py [--repeats 20]

For the default MLP and +experiment=cnn_strong: the state a run writes after each epoch
(mnist_sweep/resume.py: model, Adam's moments, schedule, EMA, random generators, history),
written to a temporary folder as a run writes it (atomically, fsynced). Prints the median
write time and the file's size, beside one epoch's training time measured in the same
process on 10,000 random images, so the cost reads as a share of an epoch.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from mnist_sweep import resume
from mnist_sweep.config import register_schema, to_run_config
from mnist_sweep.models import build_model
from mnist_sweep.sweep import plugin
from mnist_sweep.training import (
    EpochMetrics,
    Step,
    make_ema,
    make_optimizer,
    make_schedule,
    random_generators,
    train_epoch,
    training_state,
)

CONF = Path(__file__).resolve().parents[1] / "conf"
IMAGES = 10_000


def config(overrides: list[str]):
    register_schema()
    plugin.register()
    with initialize_config_dir(config_dir=str(CONF)):
        return to_run_config(compose("config", [*overrides, "mlflow.tracking_uri=unused"]))


def measure(name: str, overrides: list[str], repeats: int) -> None:
    import torch

    torch.set_num_threads(1)
    run = config(overrides)
    model = build_model(run.model)
    images = torch.randn(IMAGES, 784)
    labels = torch.randint(0, 10, (IMAGES,))
    batches = [(images[i : i + run.data.batch_size], labels[i : i + run.data.batch_size])
               for i in range(0, IMAGES, run.data.batch_size)]  # fmt: skip
    optimizer = make_optimizer(model.parameters(), run.optimizer)
    schedule = make_schedule(optimizer, run.trainer.lr_schedule, run.trainer.epochs * len(batches))
    step = Step(optimizer, schedule, None, run.trainer.label_smoothing,
                make_ema(model, run.trainer.ema_decay))  # fmt: skip
    started = time.perf_counter()
    train_epoch(model, batches, step, torch.device("cpu"))
    epoch_s = (time.perf_counter() - started) * 60_000 / IMAGES  # scaled to a 60,000-image epoch
    history = [EpochMetrics(1, 0.1, 0.9, 0.1, 0.9)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / resume.STATE_FILE
        times = []
        for _ in range(repeats):
            state = training_state(history, model, step, random_generators(batches, None))
            began = time.perf_counter()
            resume.save(path, {**state, "config": {}, "run_id": "benchmark"})
            times.append(time.perf_counter() - began)
        size = path.stat().st_size
    ms = statistics.median(times) * 1000
    print(
        f"{name:12s} state {size / 1e6:6.2f} MB, written in {ms:6.1f} ms (median of {repeats}); "
        f"one epoch of 60,000 images ~{epoch_s:6.1f} s, so {ms / 10 / epoch_s:.3f}% of it"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    measure("mlp", [], args.repeats)
    measure("cnn_strong", ["+experiment=cnn_strong"], args.repeats)


if __name__ == "__main__":
    main()
