"""The evaluation numbers agree with each other and with what they claim to measure."""

from __future__ import annotations

import math

import pytest
import torch

from mnist_sweep.evaluation import (
    Predictions,
    accuracy_interval,
    calibration,
    confident_mistakes,
    summarize,
)

CLASSES = [str(d) for d in range(10)]


def random_predictions(n: int = 2000, seed: int = 0) -> Predictions:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=generator)
    logits = torch.randn(n, 10, generator=generator)
    logits[torch.arange(n), labels] += 2.5  # mostly right, not always
    return Predictions(logits.softmax(1), labels, torch.rand(n, 784, generator=generator))


def test_accuracy_is_the_confusion_matrix_trace_over_its_total() -> None:
    predictions = random_predictions()
    summary = summarize(predictions, CLASSES)
    matrix = summary["confusion_matrix"]
    assert matrix.sum() == len(predictions.labels)
    assert summary["accuracy"] == pytest.approx((matrix.trace() / matrix.sum()).item())
    assert 0.3 < summary["accuracy"] < 0.95


def test_per_class_recall_and_precision_match_the_rows_and_columns() -> None:
    summary = summarize(random_predictions(), CLASSES)
    matrix = summary["confusion_matrix"].float()
    recall = matrix.diag() / matrix.sum(1)
    precision = matrix.diag() / matrix.sum(0)
    torch.testing.assert_close(summary["per_class"]["recall"], recall)
    torch.testing.assert_close(summary["per_class"]["precision"], precision)
    f1 = 2 * precision * recall / (precision + recall)
    torch.testing.assert_close(summary["per_class"]["f1"], f1)


def test_perfectly_calibrated_predictor_has_ece_near_zero() -> None:
    # Confidence c on the predicted class, right with probability exactly c (by construction).
    n, generator = 100_000, torch.Generator().manual_seed(1)
    confidence = torch.rand(n, generator=generator) * 0.85 + 0.15
    labels = torch.randint(0, 10, (n,), generator=generator)
    right = torch.rand(n, generator=generator) < confidence
    predicted = torch.where(right, labels, (labels + 1) % 10)
    probabilities = ((1 - confidence) / 9).unsqueeze(1).repeat(1, 10)
    probabilities[torch.arange(n), predicted] = confidence
    assert calibration(Predictions(probabilities, labels, torch.zeros(n, 1))).ece < 0.01


def test_constant_predictor_has_a_large_ece() -> None:
    n = 1000
    labels = torch.arange(n) % 10
    probabilities = torch.zeros(n, 10)
    probabilities[:, 0] = 1.0  # always "0", always certain: right 10% of the time
    assert calibration(Predictions(probabilities, labels, torch.zeros(n, 1))).ece == pytest.approx(
        0.9
    )


def test_reliability_bins_add_up_to_the_ece() -> None:
    result = calibration(random_predictions(5000))
    weights = result.bin_count / result.bin_count.sum()
    gaps = (result.bin_accuracy - result.bin_confidence).abs().nan_to_num(0)
    assert (weights * gaps).sum().item() == pytest.approx(result.ece, abs=1e-5)
    assert result.bin_count.sum() == 5000


def test_wilson_interval_contains_the_estimate_and_narrows_with_more_data() -> None:
    low, high = accuracy_interval(980, 1000)
    assert low < 0.98 < high and high <= 1
    wide = high - low
    low, high = accuracy_interval(9800, 10_000)
    assert high - low < wide / 3
    assert math.isclose(accuracy_interval(0, 10)[0], 0, abs_tol=1e-12)


def test_confident_mistakes_are_wrong_and_sorted_by_confidence() -> None:
    predictions = random_predictions()
    indices = confident_mistakes(predictions, count=10)
    assert len(indices) == 10
    assert (predictions.predicted[indices] != predictions.labels[indices]).all()
    confidence = predictions.confidence[indices]
    assert (confidence[:-1] >= confidence[1:]).all()
    wrong = predictions.predicted != predictions.labels
    assert confidence[0] == predictions.confidence[wrong].max()


def test_loss_and_accuracy_from_probabilities_match_the_training_definitions() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(500, 10, generator=generator) * 4
    labels = torch.randint(0, 10, (500,), generator=generator)
    predictions = Predictions(logits.softmax(1), labels, torch.zeros(500, 1))
    expected = torch.nn.functional.cross_entropy(logits, labels).item()
    assert predictions.loss() == pytest.approx(expected, rel=1e-5)
    assert predictions.accuracy() == int((logits.argmax(1) == labels).sum()) / 500
