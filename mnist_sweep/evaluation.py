"""Numbers that say where a model fails and how far its probabilities can be trusted."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from mnist_sweep.data import DataFiles, read_split

# torchmetrics (which imports torchvision and SciPy's signal processing) and SciPy take seconds
# to import: the functions that score a finished run import them, so a run starts training
# without waiting for them.

CALIBRATION_BINS = 15


@dataclass
class Predictions:
    """A model's output on a whole split, on the CPU."""

    probabilities: torch.Tensor  # (N, C)
    labels: torch.Tensor  # (N,)
    images: torch.Tensor  # (N, ...) as the model saw them; for the gallery of mistakes

    @property
    def predicted(self) -> torch.Tensor:
        return self.probabilities.argmax(1)

    @property
    def confidence(self) -> torch.Tensor:
        return self.probabilities.max(1).values

    def accuracy(self) -> float:
        return int((self.predicted == self.labels).sum()) / len(self.labels)

    def loss(self) -> float:
        """Mean cross-entropy: -log of the probability given to the true class."""
        # Clamped so that a probability that underflowed to 0 counts as very wrong, not inf.
        true_class = self.probabilities.gather(1, self.labels.unsqueeze(1)).squeeze(1)
        tiny = torch.finfo(true_class.dtype).tiny
        return -true_class.clamp_min(tiny).log().mean().item()


def test_batches(
    files: DataFiles, batch_size: int = 2000
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The test split as images in [0, 1], shape (N, 1, 28, 28): what load_model expects."""
    images, labels = read_split(files, train=False)
    images = images.unsqueeze(1).float().div_(255)
    return [(images[i : i + batch_size], labels[i : i + batch_size])
            for i in range(0, len(images), batch_size)]  # fmt: skip


@torch.no_grad()
def predict(
    model: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
) -> Predictions:
    """Run `model` (images -> probabilities) over every batch."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    outputs, labels, images = [], [], []
    for x, y in batches:
        outputs.append(model(x.to(device)).cpu())
        labels.append(y.cpu())
        images.append(x.cpu())
    return Predictions(torch.cat(outputs), torch.cat(labels), torch.cat(images))


@dataclass
class Calibration:
    """Expected calibration error and the reliability diagram's bins (empty bins are NaN)."""

    ece: float
    bin_edges: torch.Tensor  # (B + 1,)
    bin_confidence: torch.Tensor  # (B,) mean confidence of the predictions in the bin
    bin_accuracy: torch.Tensor  # (B,) fraction of those predictions that are right
    bin_count: torch.Tensor  # (B,)


def calibration(predictions: Predictions, bins: int = CALIBRATION_BINS) -> Calibration:
    """ECE (torchmetrics, L1, equal-width bins) and the per-bin figures it is made of."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    num_classes = predictions.probabilities.shape[1]
    ece = multiclass_calibration_error(
        predictions.probabilities, predictions.labels, num_classes, n_bins=bins, norm="l1"
    ).item()
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.bucketize(predictions.confidence, edges[1:-1], right=True)
    count = torch.bincount(which, minlength=bins)
    correct = (predictions.predicted == predictions.labels).float()
    summed_confidence = torch.zeros(bins).index_add_(0, which, predictions.confidence)
    summed_correct = torch.zeros(bins).index_add_(0, which, correct)
    return Calibration(ece, edges, summed_confidence / count, summed_correct / count, count)


def accuracy_interval(correct: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy measured as `correct` out of `total`."""
    from scipy.stats import binomtest

    interval = binomtest(correct, total).proportion_ci(confidence_level=level, method="wilson")
    return interval.low, interval.high


def summarize(predictions: Predictions, class_names: list[str]) -> dict[str, object]:
    """Confusion matrix, per-class precision/recall/F1, accuracy with its 95% CI, ECE."""
    from torchmetrics.functional.classification import (
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    num_classes = len(class_names)
    args = (predictions.predicted, predictions.labels, num_classes)
    per_class = {
        name: metric(*args, average=None)
        for name, metric in (
            ("precision", multiclass_precision),
            ("recall", multiclass_recall),
            ("f1", multiclass_f1_score),
        )
    }
    correct = int((predictions.predicted == predictions.labels).sum())
    total = len(predictions.labels)
    low, high = accuracy_interval(correct, total)
    return {
        "confusion_matrix": multiclass_confusion_matrix(*args),
        "per_class": per_class,
        "accuracy": correct / total,
        "accuracy_ci95": (low, high),
        "calibration": calibration(predictions),
    }


def confident_mistakes(predictions: Predictions, count: int = 16) -> torch.Tensor:
    """Indices of the wrong predictions made with the highest confidence, most confident first."""
    wrong = (predictions.predicted != predictions.labels).nonzero().flatten()
    order = predictions.confidence[wrong].argsort(descending=True)
    return wrong[order[:count]]
