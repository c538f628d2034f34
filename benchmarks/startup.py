"""Start-up cost of `run.py` before and after a change, as whole processes timed in one run.

    python benchmarks/startup.py [--before 5aadedf] [--repeats 3] [--only cfg run sweep]
        [--run-overrides trainer.epochs=1 ...]

Checks out `--before` (default 5aadedf, before issue 13) with `git worktree add` in a
temporary folder, then times each command alternately with that checkout's run.py and this
one's, so that the machine's load falls on both alike; prints medians over the repeats and the
ratios before/after, beside two references: `python -c "import torch"`, and the libraries'
floor under a run's start-up (launch to a fresh SQLite MLflow store with an experiment, in a
process that imports only torch and MLflow: no Hydra and none of this project's code):

- `run.py --cfg job`: print the composed config;
- a default run (`python run.py`, a fresh MLflow store; `--run-overrides` shortens it): whole
  process; its start-up, from launch to the start of its MLflow run (imports, Hydra, the
  store: what precedes loading the data and the first batch); its fixed cost, the whole
  process less its training epochs;
- a 4-trial, 1-epoch sweep (`python run.py -m hydra.sweeper.n_trials=4 trainer.epochs=1`):
  whole process, launch to the first trial's run, and the fixed cost per trial.

A run's training time is its epochs x training images / its `train_samples_per_s` metric.
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
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import mlflow

REPO = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = 55_000  # the default split: 60,000 less data.val_size
SWEEP = ["-m", "hydra.sweeper.n_trials=4", "trainer.epochs=1"]


def timed(command: list[str], cwd: Path) -> tuple[float, float]:
    """Launch time (epoch seconds) and wall seconds of one process, which must succeed."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    launched, started = time.time(), time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True, env=environment)
    return launched, time.perf_counter() - started


def runs(folder: Path) -> list[mlflow.entities.Run]:
    """The finished training runs (no sweep parent) of the store in `folder`, oldest first."""
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist_sweep").experiment_id
    found = client.search_runs([experiment], "attributes.status = 'FINISHED'",
                               order_by=["attributes.start_time ASC"])  # fmt: skip
    return [run for run in found if "trainer.epochs" in run.data.params]


def training_seconds(run: mlflow.entities.Run) -> float:
    epochs = int(run.data.params["trainer.epochs"])
    return epochs * TRAIN_IMAGES / run.data.metrics["train_samples_per_s"]


def measure_run(run_py: Path, arguments: list[str]) -> dict[str, float]:
    """Whole process, launch to the first run's start and fixed cost per run of `run.py ...`."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        launched, wall = timed([sys.executable, str(run_py), *arguments], folder)
        trained = runs(folder)
        start = trained[0].info.start_time / 1000 - launched
        training = sum(training_seconds(run) for run in trained)
    return {"process": wall, "to run start": start,
            "fixed per run": (wall - training) / len(trained)}  # fmt: skip


def measure_cfg(run_py: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        return {"process": timed([sys.executable, str(run_py), "--cfg", "job"], Path(scratch))[1]}


def import_torch() -> dict[str, float]:
    return {"process": timed([sys.executable, "-c", "import torch"], REPO)[1]}


LIBRARY_FLOOR = """import time, torch, mlflow
mlflow.MlflowClient("sqlite:///mlflow.db").create_experiment("floor")
print(time.time())"""


def library_floor() -> dict[str, float]:
    """Launch to a new store's first experiment, in a process that does only that."""
    with tempfile.TemporaryDirectory() as scratch:
        launched = time.time()
        done = subprocess.run([sys.executable, "-c", LIBRARY_FLOOR], cwd=scratch, check=True,
                              capture_output=True, text=True)  # fmt: skip
    return {"to store ready": float(done.stdout.split()[-1]) - launched}


def checkouts(before: str, folder: Path) -> dict[str, Path]:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), before],
                   check=True, capture_output=True)  # fmt: skip
    return {"before": folder / "run.py", "after": REPO / "run.py"}


def report(results: dict[tuple[str, str], list[dict[str, float]]]) -> None:
    torch_s = statistics.median(r["process"] for r in results["import torch", "reference"])
    print(f'python -c "import torch": {torch_s:.2f} s (median)')
    floor_s = statistics.median(r["to store ready"] for r in results["library floor", "reference"])
    print(f"library floor, launch to a new SQLite store ready: {floor_s:.2f} s (median)")
    references = {"import torch", "library floor"}
    for command in dict.fromkeys(command for command, _ in results if command not in references):
        before, after = results[command, "before"], results[command, "after"]
        for figure in before[0]:
            b = statistics.median(r[figure] for r in before)
            a = statistics.median(r[figure] for r in after)
            print(f"{command:8} {figure:15} before {b:6.2f} s  after {a:6.2f} s  "
                  f"before/after {b / a:4.2f}x  after/import torch {a / torch_s:4.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="5aadedf", help="git revision to compare against")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=["cfg", "run", "sweep"],
                        default=["cfg", "run", "sweep"])  # fmt: skip
    parser.add_argument("--run-overrides", nargs="*", default=[], help="for the single run")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; medians of {args.repeats} alternating repeats; "
        f"run overrides {args.run_overrides}"
    )
    commands: dict[str, Callable[[Path], dict[str, float]]] = {
        "cfg": measure_cfg,
        "run": lambda run_py: measure_run(run_py, ["hydra.run.dir=out", *args.run_overrides]),
        "sweep": lambda run_py: measure_run(run_py, SWEEP),
    }
    results: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "before"
        try:
            run_pys = checkouts(args.before, folder)
            for run_py in run_pys.values():  # untimed: compiles each checkout's modules
                measure_cfg(run_py)
            for _ in range(args.repeats):
                results["import torch", "reference"].append(import_torch())
                results["library floor", "reference"].append(library_floor())
                for command in args.only:
                    for version, run_py in run_pys.items():
                        results[command, version].append(commands[command](run_py))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)],
                           check=False, capture_output=True)  # fmt: skip
    report(results)


if __name__ == "__main__":
    main()
