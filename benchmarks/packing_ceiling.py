"""The most packing can give on this machine: training steps of the default search's MLPs, one
process with torch's default threads against processes side by side with fewer threads each.

    python -m benchmarks.packing_ceiling [--steps 300] [--rounds 2]

For each shape and batch size of the default search space (conf/sweep/mlp.yaml), one process
runs `--steps` fused-Adam steps with every core's thread (n_jobs=1), then cores // 1 processes
of one thread each run the same steps at once (n_jobs=auto); rounds alternate, so drifts in a
shared machine's speed hit both. Printed: samples per second of each, and packed over
one-at-a-time, the medians over the rounds. Nothing else of a trial (start-up, evaluation,
logging, a sweep's tail) is in it, so a sweep's gain from packing is at most this.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

HIDDEN = ([256, 128], [512, 256], [1024, 512], [512, 512, 256])
BATCHES = (64, 128, 256)


def samples_per_s(threads: int, hidden: list[int], batch_size: int, steps: int) -> float:
    import torch
    import torch.nn.functional as F

    from mnist_sweep.models import MLP

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = MLP(hidden, dropout=0.2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    images, labels = torch.randn(batch_size * 16, 784), torch.randint(0, 10, (batch_size * 16,))

    def step(index: int) -> None:
        rows = slice(batch_size * (index % 16), batch_size * (index % 16 + 1))
        loss = F.cross_entropy(model.logits(images[rows]), labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for index in range(20):  # warm-up: torch's first optimizer step imports its compiler
        step(index)
    started = time.perf_counter()
    for index in range(steps):
        step(index)
    return steps * batch_size / (time.perf_counter() - started)


def one_process(threads: int, hidden: list[int], batch_size: int, steps: int) -> float:
    """Samples per second of one fresh process of `threads` threads."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(samples_per_s, (threads, hidden, batch_size, steps))


def side_by_side(processes: int, hidden: list[int], batch_size: int, steps: int) -> float:
    """Samples per second of `processes` one-thread processes training at once, together."""
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        rates = pool.starmap(samples_per_s, [(1, hidden, batch_size, steps)] * processes)
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"{cores} cores: one process of {cores} threads vs {cores} processes of 1 thread")
    ratios = []
    for hidden in HIDDEN:
        for batch_size in BATCHES:
            alone, packed = [], []
            for _ in range(args.rounds):
                alone.append(one_process(cores, hidden, batch_size, args.steps))
                packed.append(side_by_side(cores, hidden, batch_size, args.steps))
            alone_rate, packed_rate = statistics.median(alone), statistics.median(packed)
            ratios.append(packed_rate / alone_rate)
            print(f"hidden {hidden!s:15} batch {batch_size:3}: one at a time {alone_rate:7.0f} "
                  f"samples/s, packed {packed_rate:7.0f} samples/s: {ratios[-1]:.2f}x",
                  flush=True)  # fmt: skip
    print(
        f"packed over one at a time, median over the search space's shapes: "
        f"{statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
