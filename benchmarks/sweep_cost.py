"""Wall time, trials per hour and per-trial overhead of a sweep (default: `python run.py -m`).

    python benchmarks/sweep_cost.py [extra overrides...]

Runs the sweep in a temporary folder, then reads its MLflow runs. Per-trial overhead is
everything but the training epochs: (sweep wall time - summed epoch time) / trials, where a
trial's epoch time is its epochs x training samples / its train_samples_per_s. The
evaluation report's share of it is each trial's `evaluation_time_s`.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

RUN_PY = Path(__file__).resolve().parents[1] / "run.py"


def main() -> None:
    overrides = sys.argv[1:]
    print(f"machine: {platform.machine()}, Python {platform.python_version()}, "
          f"overrides {overrides}")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        subprocess.run([sys.executable, str(RUN_PY), "-m", *overrides], cwd=folder, check=True,
                       capture_output=True)  # fmt: skip
        wall = time.perf_counter() - started
        client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
        experiment = client.get_experiment_by_name("mnist_sweep").experiment_id
        trials = client.search_runs([experiment], "tags.`mnist_sweep.role` = 'trial'")
        best = (Path(folder) / "multirun" / "mlp" / "best" / "metrics.json").read_text()
    training = sum(
        int(run.data.params["trainer.epochs"]) * (60_000 - int(run.data.params["data.val_size"]))
        / run.data.metrics["train_samples_per_s"]
        for run in trials if run.info.status == "FINISHED"
    )  # fmt: skip
    print(f"{len(trials)} trials in {wall:.0f} s: {3600 * len(trials) / wall:.0f} trials/hour")
    print(
        f"training epochs {training:.0f} s; "
        f"per-trial overhead {(wall - training) / len(trials):.2f} s"
    )
    evaluation = [run.data.metrics.get("evaluation_time_s", 0.0) for run in trials]
    print(f"of which the evaluation report: {sum(evaluation) / len(trials):.2f} s per trial")
    print(f"kept: {best}")


if __name__ == "__main__":
    main()
