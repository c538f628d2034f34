"""Evaluate a saved model: the run's evaluation artifacts, for any checkpoint.

    python -m mnist_sweep.evaluate multirun/mlp/best/model.pt [--root DIR] [--out DIR]
        [--tracking-uri URI] [--experiment NAME]

Writes the report next to the checkpoint (evaluation/ by default) and logs it to MLflow as an
evaluation run tagged with the run that trained the model.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from mnist_sweep import report, tracking
from mnist_sweep.checkpoints import CheckpointError, load_model, read_checkpoint
from mnist_sweep.config import MlflowConfig
from mnist_sweep.data import CLASS_NAMES, DataFiles, torchvision_dataset
from mnist_sweep.evaluation import Predictions, predict

log = logging.getLogger(__name__)


def report_and_log(
    predictions: Predictions,
    folder: Path,
    history: Sequence[dict[str, float]] = (),
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Write the evaluation report of `predictions` and log it to the active MLflow run."""
    started = time.perf_counter()
    files, metrics = report.write_report(folder, predictions, list(class_names or CLASS_NAMES),
                                         history)  # fmt: skip
    metrics["evaluation_time_s"] = time.perf_counter() - started
    tracking.log_metrics(metrics)
    tracking.log_artifacts(files, "evaluation")
    return metrics


def evaluation_batches(root: str | None, batch_size: int = 2000):
    """The test split as images in [0, 1], shape (N, 1, 28, 28): what load_model expects."""
    dataset = torchvision_dataset(DataFiles(root=root), train=False)
    images = dataset.data.unsqueeze(1).float().div_(255)
    return [(images[i : i + batch_size], dataset.targets[i : i + batch_size])
            for i in range(0, len(images), batch_size)]  # fmt: skip


def evaluate_checkpoint(
    path: Path, root: str | None, out: Path, mlflow_config: MlflowConfig
) -> dict[str, float]:
    """Evaluate the checkpoint at `path` on the test set as an MLflow evaluation run."""
    checkpoint = read_checkpoint(path)
    model = load_model(path)
    tags = {tracking.ROLE: "evaluation", "mnist_sweep.checkpoint": str(path.resolve())}
    if checkpoint.get("run_id"):
        tags["mnist_sweep.source_run"] = checkpoint["run_id"]
    params = {"checkpoint": str(path.resolve()), "source_run": checkpoint.get("run_id")}
    with tracking.tracked_run(mlflow_config, params, tags):
        predictions = predict(model, evaluation_batches(root), torch.device("cpu"))
        return report_and_log(predictions, out, checkpoint.get("history", []),
                              checkpoint["class_names"])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate a mnist_sweep checkpoint.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--root", help="data folder (default: the one the model was trained on)")
    parser.add_argument("--out", type=Path, help="report folder (default: evaluation/ beside it)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: the training run's)")
    parser.add_argument("--experiment", help="MLflow experiment (default: the training run's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        trained = read_checkpoint(args.checkpoint)["config"]
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    mlflow_config = MlflowConfig(
        tracking_uri=args.tracking_uri or trained["mlflow"]["tracking_uri"],
        experiment_name=args.experiment or trained["mlflow"]["experiment_name"],
        run_name=f"evaluate {args.checkpoint}",
    )
    root = args.root or trained["data"]["root"]
    out = args.out or args.checkpoint.parent / "evaluation"
    metrics = evaluate_checkpoint(args.checkpoint, root, out, mlflow_config)
    print(
        f"wrote {out}; test ECE {metrics['test_ece']:.4f}, macro F1 {metrics['test_macro_f1']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
