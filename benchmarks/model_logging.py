"""What logging each run's model as an MLflow Model adds to a run of a sweep.

    python benchmarks/model_logging.py [--runs 10]

In one process and one temporary SQLite store, runs alternate between the two ways of saving
the default MLP's model.pt: as a plain run artifact (before the MLflow Model existed) and as
an MLflow Model (tracking.log_model: a pyfunc over model.pt, signature, input example) with the
run's metrics linked to it. Prints the median seconds of each and the difference, the figure
to set against the sweep's per-trial overhead (benchmarks/sweep_cost.py). The first run of
each kind pays for imports and is left out.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import mlflow
import torch

from mnist_sweep import tracking
from mnist_sweep.checkpoints import save_checkpoint
from mnist_sweep.models import MLP

METRICS = {"test_accuracy": 0.98, "test_loss": 0.06, "wall_time_s": 20.0}


def timed_run(checkpoint: Path, as_model: bool) -> float:
    """Seconds to save `checkpoint` and the final metrics in a fresh run, one way or the other."""
    with mlflow.start_run():
        started = time.perf_counter()
        if as_model:
            tracking.log_metrics(METRICS, model_id=tracking.log_model(checkpoint))
        else:
            tracking.log_metrics(METRICS)
            tracking.log_artifacts([checkpoint])
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each kind")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, Python {platform.python_version()}, "
          f"torch {torch.__version__}, mlflow {mlflow.__version__}")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = save_checkpoint(
            Path(folder) / "model.pt", MLP([512, 256], 0.2),
            normalization={"mean": 0.1307, "std": 0.3081}, class_names=list("0123456789"),
            metrics=METRICS, config={},
        )  # fmt: skip
        store = f"sqlite:///{folder}/mlflow.db"
        mlflow.set_tracking_uri(store)
        # Artifacts in the temporary folder too (MLflow's default is ./mlruns where it runs).
        artifacts = tracking.artifact_location(store)
        mlflow.set_experiment(experiment_id=mlflow.create_experiment("model_logging", artifacts))
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.runs + 1):
            for as_model in (False, True):
                times[as_model].append(timed_run(checkpoint, as_model))
    artifact, model = (statistics.median(times[kind][1:]) for kind in (False, True))
    print(f"model.pt as a run artifact: {artifact:.3f} s per run (median of {args.runs})")
    print(f"model.pt as an MLflow Model: {model:.3f} s per run ({model / artifact:.1f}x)")
    print(f"added per run: {model - artifact:.3f} s")


if __name__ == "__main__":
    main()
