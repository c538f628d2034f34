"""The per-trial seeded sampler: distinct draws across workers, reproducible in one."""

from __future__ import annotations

import optuna
from omegaconf import OmegaConf

from mnist_sweep.sweep.sampling import PerTrialSeedSampler, make_sampler, trial_seed

TPE = {"_target_": "optuna.samplers.TPESampler", "seed": 0, "n_startup_trials": 3}


def objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("lr", 1e-4, 1e-1, log=True) + trial.suggest_int("width", 8, 512)


def draws(study: optuna.Study) -> list[tuple]:
    return [tuple(sorted(trial.params.items())) for trial in study.trials]


def test_one_process_with_a_fixed_seed_draws_the_same_trials_every_time() -> None:
    runs = []
    for _ in range(2):
        study = optuna.create_study(sampler=make_sampler(OmegaConf.create(TPE)))
        study.optimize(objective, n_trials=6)  # past the startup trials, into TPE proper
        runs.append(draws(study))
    assert runs[0] == runs[1]
    assert len(set(runs[0])) == 6


def test_workers_sharing_a_study_never_repeat_each_others_draws() -> None:
    # Two workers built from one config, alternating on one storage, as two processes would.
    storage = optuna.storages.InMemoryStorage()
    config = OmegaConf.create(TPE)
    workers = [
        optuna.create_study(
            study_name="shared", storage=storage, load_if_exists=True, sampler=make_sampler(config)
        )
        for _ in range(2)
    ]
    for _ in range(4):
        for study in workers:
            study.optimize(objective, n_trials=1)
    assert len(set(draws(workers[0]))) == 8


def test_the_seed_depends_on_both_the_sweep_seed_and_the_trial_number() -> None:
    assert trial_seed(0, 1) == trial_seed(0, 1)
    assert len({trial_seed(0, 0), trial_seed(0, 1), trial_seed(1, 0)}) == 3


def test_an_unseeded_sampler_is_left_as_it_is() -> None:
    sampler = make_sampler(OmegaConf.create({**TPE, "seed": None}))
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert isinstance(make_sampler(OmegaConf.create(TPE)), PerTrialSeedSampler)
