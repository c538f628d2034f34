"""The confirmed champion: the search's top configurations trained again with new seeds, and
the one with the best mean validation accuracy chosen.

At this level the top trials differ by a few validation images, so the single best trial is
partly the luckiest seed. With `sweep.confirm.top_k` > 0, the top_k COMPLETE trials'
configurations are run again with `sweep.confirm.seeds` new seeds (trainer.seed + 1, + 2, ...)
as the trials of a second study, "<study>.confirm", in the same storage: they run with the
sweep's launcher and liveness, in parallel and resumable like any trial, are never pruned,
and never teach the search's sampler. Each confirmation records the search trial it repeats.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

SEED = "trainer.seed"
# A confirmation's user attrs: the search trial it repeats and its seed (a queued trial has
# no params yet).
CONFIRMS, CONFIRM_SEED = "mnist_sweep.confirms", "mnist_sweep.confirm_seed"


@dataclass
class Candidate:
    """A top configuration: its search trial and its confirmations' validation accuracy."""

    trial: FrozenTrial
    values: dict[int, float] = field(default_factory=dict)  # seed -> val_accuracy
    numbers: dict[int, int] = field(default_factory=dict)  # seed -> confirmation trial number

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values.values()) if self.values else float("-inf")

    @property
    def spread(self) -> float:
        return statistics.stdev(self.values.values()) if len(self.values) > 1 else 0.0


def new_seeds(search_seed: int, count: int) -> list[int]:
    return [search_seed + offset for offset in range(1, count + 1)]


def top(study: optuna.Study, k: int) -> list[FrozenTrial]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(complete, key=lambda trial: -trial.value)[:k]


def space_with_seeds(distributions: dict, seeds: list[int]) -> dict:
    """The search space plus the seed, so an enqueued confirmation's seed is its param."""
    return {**distributions, SEED: CategoricalDistribution(seeds)}


def enqueue_missing(confirmations: optuna.Study, tops: list[FrozenTrial], seeds: list[int]) -> None:
    """Queue each (top configuration, seed) that is neither done nor running nor queued; a
    failed confirmation is queued again."""
    alive = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    present = {(trial.user_attrs.get(CONFIRMS), trial.user_attrs.get(CONFIRM_SEED))
               for trial in confirmations.get_trials(deepcopy=False, states=alive)}  # fmt: skip
    for trial in tops:
        for seed in seeds:
            if (trial.number, seed) not in present:
                confirmations.enqueue_trial(
                    {**trial.params, SEED: seed},
                    user_attrs={CONFIRMS: trial.number, CONFIRM_SEED: seed},
                )


def candidates(confirmations: optuna.Study, tops: list[FrozenTrial]) -> list[Candidate]:
    """The top configurations with their COMPLETE confirmations, best mean first."""
    found = {trial.number: Candidate(trial) for trial in tops}
    for trial in confirmations.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        candidate = found.get(trial.user_attrs.get(CONFIRMS))
        if candidate is not None:
            candidate.values[trial.params[SEED]] = trial.value
            candidate.numbers[trial.params[SEED]] = trial.number
    return sorted(found.values(), key=lambda c: (-c.mean, -c.trial.value))
