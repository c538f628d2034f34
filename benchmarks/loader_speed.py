"""Epoch time of the default `tensor` loader against the seed-style torch DataLoader path.

    python benchmarks/loader_speed.py [--batch-size 64] [--epochs 1]

Both train the default MLP for the same epochs on the same split, in one process, and the
ratio of their epoch times is printed; so is the time of one pass over the batches alone
(no model), which is what the loader itself costs.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from mnist_sweep.config import Loader, register_schema, to_run_config
from mnist_sweep.data import make_loaders
from mnist_sweep.models import MLP
from mnist_sweep.sweep import plugin
from mnist_sweep.training import Step, evaluate, make_optimizer, train_epoch

CPU = torch.device("cpu")


def config(batch_size: int, loader: Loader):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    register_schema()
    plugin.register()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf)):
        cfg = compose("config", [f"data.batch_size={batch_size}", f"data.loader={loader.value}",
                                 "mlflow.tracking_uri=unused"])  # fmt: skip
    return to_run_config(cfg)


def seconds_per_epoch(batch_size: int, loader: Loader, epochs: int) -> tuple[float, float, float]:
    """(training seconds per epoch, loader-only seconds per pass, val accuracy)."""
    run = config(batch_size, loader)
    torch.manual_seed(0)
    loaders = make_loaders(run.data, CPU, seed=0)
    started = time.perf_counter()
    for _ in loaders.train:
        pass
    loader_only = time.perf_counter() - started
    model = MLP(run.model.hidden_sizes, run.model.dropout)
    optimizer = make_optimizer(model.parameters(), run.optimizer)
    started = time.perf_counter()
    for _ in range(epochs):
        train_epoch(model, loaders.train, Step(optimizer), CPU)
    elapsed = (time.perf_counter() - started) / epochs
    return elapsed, loader_only, evaluate(model, loaders.val, CPU)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}, batch size {args.batch_size}")  # fmt: skip
    results = {loader: seconds_per_epoch(args.batch_size, loader, args.epochs) for loader in Loader}
    for loader, (seconds, loader_only, accuracy) in results.items():
        print(
            f"{loader.value:>6} loader: {seconds:6.2f} s/epoch training, "
            f"{loader_only:6.3f} s/pass batches alone (val accuracy {accuracy:.4f})"
        )
    for index, what in ((0, "per training epoch"), (1, "per pass over the batches alone")):
        ratio = results[Loader.torch][index] / results[Loader.tensor][index]
        print(f"tensor loader is {ratio:.1f}x faster {what} than the torch DataLoader")


if __name__ == "__main__":
    main()
