"""What a run writes besides its model: the evaluation (PNG figures, per-class CSV, the metrics
MLflow receives) and the show5 picture of its data."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mnist_sweep import tracking
from mnist_sweep.data import CLASS_NAMES
from mnist_sweep.evaluation import Predictions, confident_mistakes, summarize


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _save(figure, path: Path) -> Path:
    figure.savefig(path, bbox_inches="tight", dpi=100)
    _pyplot().close(figure)
    return path


def confusion_matrix_png(matrix: torch.Tensor, class_names: list[str], path: Path) -> Path:
    """Heatmap of true (rows) against predicted (columns) classes, with the counts written in."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 5.5))
    # Log colour scale: the diagonal is ~1000 per cell, the mistakes 0-20.
    image = axis.imshow(matrix.clamp(min=1).log10().numpy(), cmap="Blues")
    for row, counts in enumerate(matrix.tolist()):
        for column, count in enumerate(counts):
            colour = "white" if row == column else "black"
            axis.text(column, row, str(count), ha="center", va="center", fontsize=8, color=colour)
    axis.set(xticks=range(len(class_names)), yticks=range(len(class_names)),
             xticklabels=class_names, yticklabels=class_names,
             xlabel="predicted", ylabel="true", title="Confusion matrix (test set)")  # fmt: skip
    figure.colorbar(image, ax=axis, label="log10(count)")
    return _save(figure, path)


def reliability_png(summary: dict[str, Any], path: Path) -> Path:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    calibration = summary["calibration"]
    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6), height_ratios=[3, 1], sharex=True)
    centers = ((calibration.bin_edges[:-1] + calibration.bin_edges[1:]) / 2).numpy()
    width = (calibration.bin_edges[1] - calibration.bin_edges[0]).item()
    top.bar(centers, calibration.bin_accuracy.nan_to_num(0).numpy(), width=width, edgecolor="black",
            label="accuracy in bin")  # fmt: skip
    top.plot([0, 1], [0, 1], "r--", label="perfect calibration")
    top.set(ylabel="accuracy", title=f"Reliability diagram (ECE {calibration.ece:.4f})")
    top.legend(loc="upper left")
    bottom.bar(centers, calibration.bin_count.numpy(), width=width, edgecolor="black")
    bottom.set(xlabel="confidence (max probability)", ylabel="predictions", yscale="log")
    return _save(figure, path)


def mistakes_png(predictions: Predictions, class_names: list[str], path: Path) -> Path:
    """The most confident wrong predictions, with true label, prediction and confidence."""
    indices = confident_mistakes(predictions).tolist()
    columns, tile = 8, 40  # a 28-pixel digit with room for its caption
    rows = max(1, -(-len(indices) // columns))
    # One mosaic in one axes, not a subplot per digit: the evaluation report went from 0.91 s
    # to 0.68 s a sweep trial (benchmarks/sweep_cost.py).
    mosaic = torch.zeros(rows * tile, columns * tile)
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(1.6 * columns, 1.75 * rows))
    for slot, index in enumerate(indices):
        top, left = (slot // columns) * tile + 10, (slot % columns) * tile + 6
        image = predictions.images[index].reshape(28, 28)
        span = image.max() - image.min() + 1e-8
        mosaic[top : top + 28, left : left + 28] = (image - image.min()) / span
        true, predicted = (class_names[int(k)] for k in (predictions.labels[index],
                                                         predictions.predicted[index]))  # fmt: skip
        caption = f"{true}→{predicted} p={predictions.confidence[index]:.3f}"
        axis.text(left + 14, top - 1, caption, ha="center", va="bottom", fontsize=8, color="yellow")
    axis.imshow(mosaic.numpy(), cmap="gray")
    axis.axis("off")
    title = "Most confident mistakes (test set): true→predicted, confidence"
    axis.set_title(title if indices else "No mistakes")
    return _save(figure, path)


def curves_png(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Loss and accuracy per epoch, training against validation."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = [row["epoch"] for row in history]
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for split in ("train", "val"):
            axis.plot(epochs, [row[f"{split}_{metric}"] for row in history], "o-", label=split)
        axis.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch")
        axis.legend()
    return _save(figure, path)


def flat_metrics(summary: dict[str, Any], class_names: list[str]) -> dict[str, float]:
    """The summary as MLflow metrics: test_accuracy_ci95_low/high, test_ece, per-class scores."""
    low, high = summary["accuracy_ci95"]
    metrics = {"test_accuracy_ci95_low": low, "test_accuracy_ci95_high": high,
               "test_ece": summary["calibration"].ece,
               "test_macro_f1": summary["per_class"]["f1"].mean().item()}  # fmt: skip
    for score, values in summary["per_class"].items():
        for name, value in zip(class_names, values.tolist(), strict=True):
            metrics[f"test_{score}_{name}"] = value
    return metrics


def per_class_csv(summary: dict[str, Any], class_names: list[str], path: Path) -> Path:
    support = summary["confusion_matrix"].sum(1).tolist()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for i, name in enumerate(class_names):
            scores = [
                round(summary["per_class"][k][i].item(), 6) for k in ("precision", "recall", "f1")
            ]
            writer.writerow([name, *scores, support[i]])
    return path


def write_report(
    folder: Path,
    predictions: Predictions,
    class_names: list[str],
    history: Sequence[dict[str, float]] = (),
) -> tuple[list[Path], dict[str, float]]:
    """Every evaluation artifact in `folder`; returns the files and the flat metrics."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarize(predictions, class_names)
    metrics = flat_metrics(summary, class_names)
    files = [
        confusion_matrix_png(
            summary["confusion_matrix"], class_names, folder / "confusion_matrix.png"
        ),
        reliability_png(summary, folder / "reliability.png"),
        mistakes_png(predictions, class_names, folder / "confident_mistakes.png"),
        per_class_csv(summary, class_names, folder / "per_class.csv"),
    ]
    if history:
        files.append(curves_png(history, folder / "training_curves.png"))
    calibration = summary["calibration"]
    bins = [
        {"from": low, "to": high, "count": count, "confidence": conf, "accuracy": acc}
        for low, high, count, conf, acc in zip(
            calibration.bin_edges[:-1].tolist(), calibration.bin_edges[1:].tolist(),
            calibration.bin_count.tolist(), calibration.bin_confidence.nan_to_num(0).tolist(),
            calibration.bin_accuracy.nan_to_num(0).tolist(), strict=True,
        )
        if count
    ]  # fmt: skip
    evaluation = {"accuracy": summary["accuracy"], **metrics, "calibration_bins": bins}
    files.append(folder / "evaluation.json")
    files[-1].write_text(json.dumps(evaluation, indent=2))
    return files, metrics


def report_and_log(
    predictions: Predictions,
    folder: Path,
    history: Sequence[dict[str, float]] = (),
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Write the evaluation report of `predictions` and log it to the active MLflow run."""
    started = time.perf_counter()
    files, metrics = write_report(folder, predictions, list(class_names or CLASS_NAMES),
                                         history)  # fmt: skip
    metrics["evaluation_time_s"] = time.perf_counter() - started
    tracking.log_metrics(metrics)
    tracking.log_artifacts(files, "evaluation")
    return metrics


def show5_png(
    images: torch.Tensor, labels: torch.Tensor, names: Sequence[str] = CLASS_NAMES
) -> bytes:
    """A PNG of the first five images with their labels above them."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, 5, figsize=(7.5, 1.9))
    for axis, image, label in zip(axes, images[:5], labels[:5], strict=True):
        axis.imshow(image.reshape(28, 28).cpu().numpy(), cmap="gray")
        axis.set_title(f"label {names[int(label)]}", fontsize=9)
        axis.axis("off")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
