"""What a sweep optimizes, defined once: one metric of a run's last epoch, in one direction.

A run returns it, a pruner judges each epoch by it, the sweeper's study is created with its
direction, and the kept model is the trial that did best by it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mnist_sweep.training import EpochMetrics

METRIC = "val_accuracy"  # the test set stays out of the search
DIRECTION = "maximize"


def value(epoch: EpochMetrics) -> float:
    """The objective's value after `epoch`."""
    return getattr(epoch, METRIC)
