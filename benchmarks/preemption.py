"""Epochs a stopped worker costs a sweep: a retried trial continuing from its last epoch (the
default) against a trial thrown away and replaced (`hydra.sweeper.max_retries=0`, what a sweep
did before retries).

    python -m benchmarks.preemption [--trials 4] [--epochs 4] [--kills 2] [--seed 0] [overrides...]

Both ways in one invocation, each in a fresh folder:
- one preemption: a sweep of one trial killed (SIGKILL, as a lost host or a preemption without
  warning) once it has logged half its epochs, then the same command again;
- random kills: a sweep of `--trials` trials killed `--kills` times, each once the sweep has
  trained a random number of epochs in all (seeded, the same both ways, always with a trial in
  flight), and started again; beside the same sweep uninterrupted.
Epochs trained are counted from every attempt's log ("epoch i/n" lines); epochs lost are those
trained beyond what the uninterrupted sweep trained. Wall time includes every restart.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support import RUN_PY

EPOCH_LINE = re.compile(r"epoch \d+/\d+ train_loss=")
WAYS = {"retried": [], "replaced": ["hydra.sweeper.max_retries=0"]}


def command(overrides: list[str]) -> list[str]:
    return [sys.executable, str(RUN_PY), "-m", "~pruner", *overrides]


def epochs_trained(folder: Path) -> int:
    """Epoch lines in every trial folder's log: each attempt's epochs, none counted twice."""
    logs = (folder / "multirun").glob("*/trial_*/run.log")
    return sum(len(EPOCH_LINE.findall(log.read_text(errors="replace"))) for log in logs)


def until_done(folder: Path, overrides: list[str]) -> None:
    subprocess.run(command(overrides), cwd=folder, check=True, capture_output=True)


def killed_when(folder: Path, overrides: list[str], ready) -> None:
    """Start the sweep and SIGKILL it once `ready()` is true."""
    sweep = subprocess.Popen(command(overrides), cwd=folder, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    while not ready() and sweep.poll() is None:
        time.sleep(0.05)
    if sweep.poll() is None:
        os.kill(sweep.pid, signal.SIGKILL)
    sweep.wait()


def has_logged(log: Path, line: str) -> bool:
    return log.exists() and line in log.read_text(errors="replace")


def one_preemption(overrides: list[str], epochs: int) -> dict[str, tuple[int, float]]:
    """Epochs trained and wall time of a one-trial sweep killed halfway, each way."""
    results = {}
    for way, extra in WAYS.items():
        with tempfile.TemporaryDirectory() as name:
            folder, args = Path(name), [*overrides, "hydra.sweeper.n_trials=1", *extra]
            log = folder / "multirun" / "mlp" / "trial_0" / "run.log"
            halfway = f"epoch {epochs // 2}/{epochs} "
            started = time.perf_counter()
            killed_when(folder, args, functools.partial(has_logged, log, halfway))
            until_done(folder, args)
            results[way] = (epochs_trained(folder), time.perf_counter() - started)
    return results


def random_kills(overrides: list[str], trials: int, epochs: int, kills: int,
                 seed: int) -> dict[str, tuple[int, float]]:  # fmt: skip
    """Epochs trained and wall time of the sweep uninterrupted, and killed `kills` times: each
    time the sweep has trained a random number of epochs in all (seeded, never a whole number
    of trials, so a trial is always in flight), then started again."""
    results = {}
    with tempfile.TemporaryDirectory() as name:
        started = time.perf_counter()
        until_done(Path(name), overrides)
        results["uninterrupted"] = (epochs_trained(Path(name)), time.perf_counter() - started)
    mid_trial = [n for n in range(1, trials * epochs) if n % epochs]
    thresholds = sorted(random.Random(seed).sample(mid_trial, kills))
    for way, extra in WAYS.items():
        with tempfile.TemporaryDirectory() as name:
            folder, args = Path(name), [*overrides, *extra]
            started = time.perf_counter()
            for threshold in thresholds:
                killed_when(folder, args, functools.partial(trained_at_least, folder, threshold))
            until_done(folder, args)
            results[way] = (epochs_trained(folder), time.perf_counter() - started)
    return results


def trained_at_least(folder: Path, epochs: int) -> bool:
    return epochs_trained(folder) >= epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    options, overrides = parser.parse_known_args()
    overrides = [*overrides, f"trainer.epochs={options.epochs}",
                 f"hydra.sweeper.n_trials={options.trials}"]  # fmt: skip
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; overrides {overrides}")  # fmt: skip
    needed = options.epochs
    print(f"\none preemption, one trial of {needed} epochs killed after epoch {needed // 2}:")
    for way, (trained, wall) in one_preemption(overrides, options.epochs).items():
        print(f"  {way:9} {trained:3d} epochs trained, {trained - needed:2d} lost, {wall:6.1f} s")
    print(f"\n{options.kills} random kills in a sweep of {options.trials} trials of "
          f"{options.epochs} epochs:")  # fmt: skip
    results = random_kills(overrides, options.trials, options.epochs, options.kills,
                           options.seed)  # fmt: skip
    needed, whole = results["uninterrupted"]
    for way, (trained, wall) in results.items():
        print(f"  {way:13} {trained:3d} epochs trained, {trained - needed:2d} lost, "
              f"{wall:6.1f} s ({wall / whole:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
