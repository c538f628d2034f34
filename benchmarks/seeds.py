"""Wall time and test accuracy of `python run.py [overrides]`, mean ± std over seeds.

    python benchmarks/seeds.py [--seeds 0 1 2] [--keep DIR] [overrides...]
    python benchmarks/seeds.py +experiment=cnn_small --keep results/cnn_small

Each seed is a separate process, timed from start to exit (imports, data, training, test,
MLflow logging, checkpoint), against a fresh MLflow store in a temporary folder, or in DIR
with --keep, which keeps each seed's outputs (model.pt, evaluation/) in DIR/seed<N>. The first
process also pays for creating that store.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

RUN_PY = Path(__file__).resolve().parents[1] / "run.py"


def timed_run(folder: Path, seed: int, overrides: list[str]) -> tuple[float, float]:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, str(RUN_PY), f"trainer.seed={seed}", f"hydra.run.dir=seed{seed}",
         *overrides],
        cwd=folder, check=True, capture_output=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist_sweep").experiment_id
    [run] = client.search_runs(
        [experiment], f"params.`trainer.seed` = '{seed}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )  # fmt: skip
    return seconds, run.data.metrics["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--keep", type=Path, help="run in this folder and keep the outputs")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {platform.python_version()}, overrides {args.overrides}")
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        results = [timed_run(folder.resolve(), seed, args.overrides) for seed in args.seeds]
    for seed, (seconds, accuracy) in zip(args.seeds, results, strict=True):
        print(f"seed {seed}: {seconds:5.1f} s process wall time, test accuracy {accuracy:.4f}")
    seconds, accuracies = zip(*results, strict=True)
    print(
        f"test accuracy {statistics.mean(accuracies):.4f} ± {statistics.stdev(accuracies):.4f}, "
        f"wall time {statistics.mean(seconds):.1f} s (max {max(seconds):.1f} s) "
        f"over {len(seconds)} seeds"
    )


if __name__ == "__main__":
    main()
