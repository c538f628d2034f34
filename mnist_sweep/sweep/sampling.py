"""The sweep's sampler: seeded per trial, so that workers sharing a study never draw alike.

Every process of a sweep builds its sampler from the same config, so with one `seed` they
all start from the same random state and their first draws repeat each other. Seeding a fresh
sampler for each trial from (seed, trial number) keeps a single process reproducible (trial n
always gets the same seed), while concurrent workers, whose trials have distinct numbers,
never share a random state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState


def trial_seed(seed: int, number: int) -> int:
    """A well-mixed 32-bit seed for trial `number` of a sweep seeded with `seed`."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class PerTrialSeedSampler(BaseSampler):
    """Delegates each trial to its own sampler, built by `make(trial_seed(seed, number))`.

    Samplers whose state is their history in the study plus a random generator (TPE, random,
    CMA-ES, QMC with scrambling) lose nothing by being rebuilt: the history is read from the
    storage for every trial anyway.
    """

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self._make = make
        self._seed = seed
        self._per_trial: dict[int, BaseSampler] = {}

    def __str__(self) -> str:
        return f"{type(self._make(self._seed)).__name__} seeded per trial from {self._seed}"

    def _of(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number not in self._per_trial:
            self._per_trial[trial.number] = self._make(trial_seed(self._seed, trial.number))
        return self._per_trial[trial.number]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._of(trial).before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._of(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._of(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._of(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        sampler = self._of(trial)
        del self._per_trial[trial.number]
        sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to reseed: each trial's generator comes from its number."""


def make_sampler(config: Any) -> BaseSampler | Any:
    """The sampler `config` describes, seeded per trial when it has a seed.

    Without a seed each process draws from its own random state already; a partial (Hydra's
    GridSampler, completed later with the grid) is returned as is.
    """
    from hydra.utils import instantiate

    whitelist = ("optuna.samplers.*",)
    sampler = instantiate(config, _execution_whitelist_=whitelist)
    seed = config.get("seed") if hasattr(config, "get") else None
    if seed is None or not isinstance(sampler, BaseSampler):
        return sampler
    return PerTrialSeedSampler(
        lambda s: instantiate(config, seed=s, _execution_whitelist_=whitelist), seed
    )
