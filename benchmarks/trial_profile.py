"""A sweep's fixed cost per trial, piece by piece: each step of a trial timed in the sweep's own
process (Hydra's basic launcher), first call and median of the others.

    python benchmarks/trial_profile.py [overrides...]      # in an empty folder: it writes there

Wraps the functions a trial goes through (the sweeper's ask and tell, Hydra's job set-up,
experiment.run's steps, MLflow's run, the pruner's report) with timers, then runs
`run.py -m hydra.sweeper.n_trials=6 trainer.epochs=1 '~pruner' <overrides>` in this process.
The first call of each pays for one-time imports and caches; the median of the others is the
steady cost per trial. Nested steps are inside their callers (train_epoch inside fit, ...).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import runpy
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = [
    ("mnist_sweep.sweep.liveness", "Liveness.ask"), ("mnist_sweep.sweep.sweeper", "tell"),
    ("hydra._internal.core_plugins.basic_launcher", "run_job"), ("mnist_sweep.experiment", "run"),
    ("mnist_sweep.experiment", "to_run_config"), ("mnist_sweep.tracking", "experiment_id"),
    ("mlflow", "start_run"), ("mnist_sweep.experiment", "make_loaders"),
    ("mnist_sweep.experiment", "_log_dataset"), ("mnist_sweep.training", "make_optimizer"),
    ("mnist_sweep.training", "train_epoch"), ("mnist_sweep.training", "evaluate"),
    ("mnist_sweep.resume", "save"), ("mnist_sweep.sweep.pruning", "open_study"),
    ("mnist_sweep.experiment", "fit"), ("mnist_sweep.experiment", "predict"),
    ("mnist_sweep.experiment", "_write_outputs"), ("mnist_sweep.tracking", "log_model"),
    ("mnist_sweep.tracking", "log_artifacts"), ("mnist_sweep.report", "report_and_log"),
]  # fmt: skip
seconds: dict[str, list[float]] = defaultdict(list)


def timed(module: str, name: str) -> None:
    """Replace `module.name` (a function or a class's method) by a timed copy."""
    owner = importlib.import_module(module)
    *path, attribute = name.split(".")
    for part in path:
        owner = getattr(owner, part)
    function = getattr(owner, attribute)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[name].append(time.perf_counter() - started)

    setattr(owner, attribute, wrapper)


def report() -> None:
    print(f"{'step':28} {'calls':>5} {'first s':>8} {'median of others s':>19}")
    for name, times in seconds.items():
        rest = f"{statistics.median(times[1:]):19.3f}" if len(times) > 1 else ""
        print(f"{name:28} {len(times):5d} {times[0]:8.3f} {rest}")


def main() -> None:
    sys.path.insert(0, str(REPO))  # this checkout's mnist_sweep, as run.py itself would find
    for module, name in STEPS:
        timed(module, name)
    atexit.register(report)
    sys.argv = [str(REPO / "run.py"), "-m", "hydra.sweeper.n_trials=6", "trainer.epochs=1",
                "~pruner", "hydra.sweeper.study_name=profile", *sys.argv[1:]]  # fmt: skip
    runpy.run_path(str(REPO / "run.py"), run_name="__main__")


if __name__ == "__main__":
    main()
