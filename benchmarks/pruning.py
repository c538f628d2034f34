"""The default sweep with and without pruning, with the same sampler seeds.

    python benchmarks/pruning.py [--seeds 0 1 2] [--trials 20] \
        [--pruner 'median=pruner=median hydra.sweeper.pruner.n_startup_trials=3'] \
        [--pruner halving=pruner=halving] [overrides...]

Each --pruner is NAME=OVERRIDES (space-separated); the unpruned sweep runs with `~pruner`.

After one untimed warm-up sweep, for each seed, runs `python run.py -m` once unpruned and once
per pruner, one after another in temporary folders, and prints per sweep: wall time, epochs
trained, best validation accuracy (completed trials), the kept model's test accuracy, and the
unpruned sweep's best validation accuracy among the trials it had finished by the time the
pruned sweep ended (the same wall time). Then means over the seeds, with wall times as
ratios against the unpruned sweep of the same seed (measured in the same run, so machine load
affects both alike). Last, the cost of one epoch's report and pruning decision through a
journal file.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna

RUN_PY = Path(__file__).resolve().parents[1] / "run.py"
DEFAULT_PRUNERS = ["median=pruner=median", "halving=pruner=halving"]


@dataclass
class Sweep:
    wall_s: float
    epochs: int
    best_val: float
    kept_test: float | None
    finished_by: list[tuple[float, float]]  # (seconds after start, val_accuracy), finished runs


def run_sweep(folder: Path, overrides: list[str]) -> Sweep:
    """One `python run.py -m` in `folder`, read back from its MLflow store."""
    started = time.time()
    subprocess.run([sys.executable, str(RUN_PY), "-m", *overrides], cwd=folder, check=True,
                   capture_output=True)  # fmt: skip
    wall = time.time() - started
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist_sweep").experiment_id
    trials = client.search_runs([experiment], "tags.`mnist_sweep.role` = 'trial'")
    finished = [run for run in trials if run.info.status == "FINISHED"]
    epochs = sum(
        int(run.data.tags.get("mnist_sweep.pruned_at_epoch") or run.data.params["trainer.epochs"])
        for run in trials
    )
    kept = next(folder.glob("multirun/*/best/metrics.json"), None)
    return Sweep(
        wall, epochs, max(run.data.metrics["val_accuracy"] for run in finished),
        json.loads(kept.read_text())["test_accuracy"] if kept else None,
        [(run.info.end_time / 1000 - started, run.data.metrics["val_accuracy"])
         for run in finished],
    )  # fmt: skip


def best_within(sweep: Sweep, seconds: float) -> float:
    """The best validation accuracy among the trials finished within `seconds`."""
    return max((val for at, val in sweep.finished_by if at <= seconds), default=float("nan"))


def report_cost(trials: int = 20, epochs: int = 6) -> float:
    """Seconds for one epoch's report and should_prune, against a journal-file study."""
    with tempfile.TemporaryDirectory() as folder:
        backend = optuna.storages.journal.JournalFileBackend(f"{folder}/journal.log")
        study = optuna.create_study(
            storage=optuna.storages.JournalStorage(backend), direction="maximize",
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5),
        )  # fmt: skip
        for _ in range(trials):
            trial = study.ask()
            for step in range(1, epochs + 1):
                trial.report(0.9 + 0.01 * step, step)
            study.tell(trial, 0.96)
        trial = study.ask()
        started = time.perf_counter()
        for step in range(1, epochs + 1):
            trial.report(0.9, step)
            trial.should_prune()
        return (time.perf_counter() - started) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--pruner", action="append", help="NAME=OVERRIDES")
    args, overrides = parser.parse_known_args()
    pruners = {"none": ["~pruner"]}
    for option in args.pruner or DEFAULT_PRUNERS:
        name, chosen = option.split("=", 1)
        pruners[name] = chosen.split()
    print(f"machine: {platform.machine()}, Python {platform.python_version()}; "
          f"trials {args.trials}, seeds {args.seeds}, overrides {overrides}")  # fmt: skip
    results: dict[str, list[Sweep]] = {name: [] for name in pruners}
    with tempfile.TemporaryDirectory() as folder:  # untimed: warms caches for the first sweep
        run_sweep(Path(folder), ["hydra.sweeper.n_trials=1", "trainer.epochs=1", *overrides])
    for seed in args.seeds:
        common = [f"hydra.sweeper.n_trials={args.trials}", f"hydra.sweeper.sampler.seed={seed}",
                  *overrides]  # fmt: skip
        for name in results:
            with tempfile.TemporaryDirectory() as folder:
                sweep = run_sweep(Path(folder), [*common, *pruners[name]])
            results[name].append(sweep)
            print(
                f"seed {seed} {name:>8}: {sweep.wall_s:6.0f} s, {sweep.epochs:3d} epochs, "
                f"best val {sweep.best_val:.4f}, kept test {sweep.kept_test}",
                flush=True,
            )
    print_summary(results)
    print(f"report + should_prune per epoch: {1000 * report_cost():.1f} ms")


def print_summary(results: dict[str, list[Sweep]]) -> None:
    """Means over the seeds; wall time as a ratio against the unpruned sweep of each seed."""
    unpruned = results["none"]
    print("pruner    wall/unpruned  epochs  best val  kept test  unpruned best at same wall")
    for name, sweeps in results.items():
        ratio = statistics.mean(s.wall_s / u.wall_s for s, u in zip(sweeps, unpruned, strict=True))
        same_wall = statistics.mean(
            best_within(u, s.wall_s) for s, u in zip(sweeps, unpruned, strict=True)
        )
        kept = [s.kept_test for s in sweeps if s.kept_test is not None]
        print(
            f"{name:>8}  {ratio:13.2f}  {statistics.mean(s.epochs for s in sweeps):6.1f}  "
            f"{statistics.mean(s.best_val for s in sweeps):8.4f}  "
            f"{statistics.mean(kept) if kept else float('nan'):9.4f}  {same_wall:.4f}"
        )


if __name__ == "__main__":
    main()
