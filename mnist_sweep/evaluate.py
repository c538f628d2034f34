"""Evaluate saved models: the run's evaluation artifacts, for any checkpoint or ensemble.

    python -m mnist_sweep.evaluate multirun/mlp/best/model.pt [--root DIR] [--out DIR]
        [--tracking-uri URI] [--experiment NAME]
    python -m mnist_sweep.evaluate results/cnn_strong/seed*/model.pt --tta

Writes the report next to the (first) checkpoint, evaluation/ by default, and logs it to MLflow
as an evaluation run tagged with the runs that trained the models: in the store --tracking-uri
names, else the one the (first) checkpoint's training run recorded (the rule of every command,
mnist_sweep/tracking.py). Several checkpoints are
evaluated as one ensemble that averages their probabilities; --tta averages each image's
prediction over 1-pixel shifts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import torch

from mnist_sweep import report, tracking
from mnist_sweep.checkpoints import CheckpointError, classifier_from, describe, read_checkpoint
from mnist_sweep.config import DatasetName, MlflowConfig
from mnist_sweep.data import DataFiles, DataIntegrityError, DataMissingError
from mnist_sweep.evaluation import predict, test_batches
from mnist_sweep.masking import MASK
from mnist_sweep.models import Ensemble, ShiftTTA

log = logging.getLogger(__name__)


def _same_dataset(checkpoints: list[dict], paths: list[Path]) -> None:
    names = {tuple(checkpoint["class_names"]) for checkpoint in checkpoints}
    datasets = {checkpoint["config"]["data"]["name"] for checkpoint in checkpoints}
    if len(names) > 1 or len(datasets) > 1:
        raise CheckpointError(
            f"cannot ensemble models of different datasets ({sorted(datasets)}): "
            + ", ".join(map(str, paths))
        )


def evaluate_checkpoints(
    paths: list[Path],
    files: DataFiles,
    out: Path,
    mlflow_config: MlflowConfig,
    tta: bool = False,
) -> dict[str, float]:
    """Evaluate one checkpoint, or the ensemble of several, on the test set as an MLflow
    evaluation run; `tta` averages each model over shifted copies of the images."""
    checkpoints = [read_checkpoint(path) for path in paths]
    for path, checkpoint in zip(paths, checkpoints, strict=True):
        log.info(describe(checkpoint, str(path)))  # which model, on stderr from main
    _same_dataset(checkpoints, paths)
    models = [classifier_from(checkpoint) for checkpoint in checkpoints]
    model = models[0] if len(models) == 1 else Ensemble(models)
    if tta:
        model = ShiftTTA(model)
    sources = [checkpoint.get("run_id") for checkpoint in checkpoints]
    tags = {tracking.ROLE: "evaluation",
            "mnist_sweep.checkpoint": ",".join(str(path.resolve()) for path in paths)}  # fmt: skip
    if any(sources):
        tags["mnist_sweep.source_run"] = ",".join(filter(None, sources))
    params = {"checkpoints": tags["mnist_sweep.checkpoint"], "source_runs": sources,
              "members": len(models), "tta": tta}  # fmt: skip
    with tracking.tracked_run(mlflow_config, params, tags):
        predictions = predict(model, test_batches(files), torch.device("cpu"))
        tracking.log_metrics({"test_accuracy": predictions.accuracy(),
                              "test_loss": predictions.loss()})  # fmt: skip
        history = checkpoints[0].get("history", []) if len(paths) == 1 else []
        metrics = report.report_and_log(predictions, out, history, checkpoints[0]["class_names"])
    return {"test_accuracy": predictions.accuracy(), **metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Evaluate a mnist_sweep checkpoint, or the ensemble of several."
    )
    parser.add_argument("checkpoints", type=Path, nargs="+", metavar="checkpoint")
    parser.add_argument("--tta", action="store_true", help="average over 1-pixel shifts too")
    parser.add_argument("--root", help="data folder (default: the one the model was trained on)")
    parser.add_argument(
        "--out",
        type=Path,
        help="report folder (default: beside the first checkpoint, evaluation/ for one, "
        "evaluation-ensemble/ for several, with a -tta suffix for --tta)",
    )
    parser.add_argument("--tracking-uri", help="MLflow store (default: the training run's)")
    parser.add_argument("--experiment", help="MLflow experiment (default: the training run's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        trained = read_checkpoint(args.checkpoints[0])["config"]
        recorded = None if args.tracking_uri else _recorded_store(trained, args.checkpoints[0])
        mlflow_config = MlflowConfig(
            tracking_uri=tracking.store(args.tracking_uri, recorded),
            experiment_name=args.experiment or trained["mlflow"]["experiment_name"],
            run_name=evaluation_name(args.checkpoints, args.tta),
        )
        data = trained["data"]
        files = DataFiles(args.root or data["root"], data.get("source_dir"),
                          dataset=DatasetName(data.get("name", "mnist")))  # fmt: skip
        out = args.out or _default_out(args)
        metrics = evaluate_checkpoints(args.checkpoints, files, out, mlflow_config, args.tta)
    except (CheckpointError, DataMissingError, DataIntegrityError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    low, high = metrics["test_accuracy_ci95_low"], metrics["test_accuracy_ci95_high"]
    print(
        f"{len(args.checkpoints)} model(s){' with TTA' if args.tta else ''}: "
        f"test accuracy {metrics['test_accuracy']:.4f} (95% CI {low:.4f}-{high:.4f}), "
        f"ECE {metrics['test_ece']:.4f}, macro F1 {metrics['test_macro_f1']:.4f}; wrote {out}"
    )
    return 0


def evaluation_name(paths: Sequence[Path], tta: bool) -> str:
    """The evaluation run's name: what it evaluated, each model named by the two folders above
    its checkpoint (`evaluate mlp/best`, `evaluate ensemble cnn_small/seed0, cnn_small/seed1`)."""
    models = ", ".join(f"{path.resolve().parent.parent.name}/{path.resolve().parent.name}"
                       for path in paths)  # fmt: skip
    return f"evaluate {'ensemble ' if len(paths) > 1 else ''}{models}{' +TTA' if tta else ''}"


def _recorded_store(config: dict, path: Path) -> str:
    """The tracking URI the checkpoint's run used; CheckpointError if its password was masked
    when recorded (experiment.run), which no store would accept, or if it is a SQLite file
    that is not here (a checkpoint from another machine), which would be created."""
    uri = config["mlflow"]["tracking_uri"]
    if urlsplit(uri).password == MASK:
        raise CheckpointError(f"{path} records its store as {uri}, password masked: pass "
                              "--tracking-uri")  # fmt: skip
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise CheckpointError(f"{path} records its store as {uri}, which does not exist here: "
                              "pass --tracking-uri")  # fmt: skip
    return uri


def _default_out(args: argparse.Namespace) -> Path:
    name = "evaluation" if len(args.checkpoints) == 1 else "evaluation-ensemble"
    return args.checkpoints[0].parent / (name + ("-tta" if args.tta else ""))


if __name__ == "__main__":
    sys.exit(main())
