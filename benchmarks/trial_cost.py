"""Fixed cost per trial of a sweep: each trial's time from ask to tell, less its training epochs.

    python benchmarks/trial_cost.py [--before main] [--trials 6] [--repeats 1] [overrides...]

Runs `python run.py -m` (n_trials `--trials`, 1 epoch, no pruner, plus `overrides`) with this
checkout and with `--before` (checked out with `git worktree add` in a temporary folder), one
after the other, `--repeats` times, so that the machine's load falls on both alike. A trial's
fixed cost is its Optuna trial's duration (ask to tell: job set-up, MLflow run, data, model,
test pass, checkpoint, logging, pruner) less its epochs x training images / its
`train_samples_per_s`. The first trial of a process also pays for one-time imports and the
store's creation: it is printed apart from the median of the others. The last figure spreads
the whole process (start-up, the kept model's report) over the trials, as
benchmarks/sweep_cost.py does. Without `--before`, only this checkout runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import optuna

REPO = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = 55_000  # the default split: 60,000 less data.val_size
STUDY = "cost"


def sweep(run_py: Path, folder: Path, arguments: list[str]) -> float:
    """Wall seconds of `run.py -m arguments` in `folder`, which must succeed."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    started = time.perf_counter()
    subprocess.run([sys.executable, str(run_py), "-m", *arguments], cwd=folder, check=True,
                   capture_output=True, env=environment)  # fmt: skip
    return time.perf_counter() - started


def journal_study(folder: Path, name: str = STUDY) -> optuna.Study:
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(folder / "optuna_journal.log")))
    return optuna.load_study(study_name=name, storage=storage)


def trial_costs(folder: Path, study: optuna.Study) -> list[tuple[int, float, float]]:
    """(trial number, seconds from ask to tell, fixed seconds) of each COMPLETE trial of the
    sweep run in `folder`, its MLflow run found by its output folder, trial_<number>."""
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist_sweep").experiment_id
    trials = client.search_runs([experiment], "tags.`mnist_sweep.output_dir` != ''")
    runs = {Path(run.data.tags["mnist_sweep.output_dir"]).name: run for run in trials}
    costs = []
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        run = runs[f"trial_{trial.number}"]
        epochs = int(run.data.params["trainer.epochs"])
        train_images = TRAIN_IMAGES if run.data.params["data.train_subset"] == "None" else int(
            run.data.params["data.train_subset"])  # fmt: skip
        training = epochs * train_images / run.data.metrics["train_samples_per_s"]
        duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
        costs.append((trial.number, duration, duration - training))
    return sorted(costs)


def measure(run_py: Path, trials: int, overrides: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        arguments = [f"hydra.sweeper.n_trials={trials}", "trainer.epochs=1", "~pruner",
                     f"hydra.sweeper.study_name={STUDY}", *overrides]  # fmt: skip
        wall = sweep(run_py, folder, arguments)
        costs = trial_costs(folder, journal_study(folder))
    fixed = [cost for _, _, cost in costs]
    training = sum(duration - cost for _, duration, cost in costs)
    return {"sweep wall": wall, "first trial fixed": fixed[0],
            "fixed per trial": statistics.median(fixed[1:]),
            "(wall-epochs)/trials": (wall - training) / len(costs)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", help="git revision to compare against (default: none)")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="more overrides of the sweep")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; {args.trials} trials of 1 epoch, no pruner, "
          f"overrides {args.overrides}; {args.repeats} repeat(s)")  # fmt: skip
    results: dict[str, list[dict[str, float]]] = {"after": []}
    with tempfile.TemporaryDirectory() as scratch:
        run_pys = {"after": REPO / "run.py"}
        if args.before:
            folder = Path(scratch) / "before"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder),
                            args.before], check=True, capture_output=True)  # fmt: skip
            run_pys = {"before": folder / "run.py", **run_pys}
            results["before"] = []
        try:
            for _ in range(args.repeats):
                for version, run_py in run_pys.items():
                    results[version].append(measure(run_py, args.trials, args.overrides))
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                str(folder)], check=False, capture_output=True)  # fmt: skip
    for figure in results["after"][0]:
        line = f"{figure:18}"
        for version in run_pys:
            line += f"  {version} {statistics.median(r[figure] for r in results[version]):6.2f} s"
        if args.before:
            b, a = (statistics.median(r[figure] for r in results[v]) for v in ("before", "after"))
            line += f"  before/after {b / a:4.2f}x"
        print(line)


if __name__ == "__main__":
    main()
