"""Training-step time of the default MLP with fused against unfused (foreach) Adam.

    python benchmarks/fused_optimizer.py [--batch-size 64] [--steps 400]

Both variants run the same steps on random data, alternating in rounds so that drifts in the
machine's speed hit both; the median step time of each and their ratio are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mnist_sweep.models import MLP


def step_seconds(fused: bool, batch_size: int, steps: int) -> float:
    torch.manual_seed(0)
    model = MLP([512, 256], dropout=0.2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused, foreach=not fused)
    images, labels = torch.randn(batch_size, 784), torch.randint(0, 10, (batch_size,))
    started = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model.logits(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for fused in (False, True):
            times[fused].append(step_seconds(fused, args.batch_size, args.steps))
    fused, unfused = (statistics.median(times[k]) for k in (True, False))
    print(f"{torch.get_num_threads()} threads, batch size {args.batch_size}: "
          f"unfused {unfused * 1e3:.2f} ms/step, fused {fused * 1e3:.2f} ms/step, "
          f"fused is {unfused / fused:.2f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()
