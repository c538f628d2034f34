"""What makes a study's trials comparable, recorded when the study is created and checked
whenever it is resumed: a sampler that learns from trials run with other settings, or a
champion chosen among them, would compare apples with pears.

The fingerprint is every key of a run's config that changes what a trial computes, with its
value, and the search space. Keys that only change how fast or where a run goes (threads,
device, evaluation batch size, data and tracking locations) and what a sweep keeps are left
out, so they can change between resumes. There is no override to extend a study with other
settings on purpose: start a new one with `hydra.sweeper.study_name=...`.
"""

from __future__ import annotations

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, distribution_to_json

from mnist_sweep.config import differences, what_it_computes
from mnist_sweep.sweep.errors import SweepError

ATTRIBUTE = "mnist_sweep.fingerprint"


def of(cfg: DictConfig, space: dict[str, BaseDistribution]) -> dict[str, str]:
    """The fingerprint of a sweep's composed config and its search space."""
    from mnist_sweep.tracking import flatten

    keys = [key for key in cfg if key != "hydra"]
    run = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True, enum_to_str=True)
    fixed = {key: value for key, value in what_it_computes(flatten(run)).items()
             if key not in space}  # fmt: skip
    searched = {f"search space: {name}": distribution_to_json(distribution)
                for name, distribution in space.items()}  # fmt: skip
    return {**fixed, **searched}


def check_or_record(study: optuna.Study, settings: dict[str, str]) -> None:
    """Record `settings` on a study that has none; stop if the study was made with others."""
    recorded = study.user_attrs.get(ATTRIBUTE)
    if recorded is None:
        study.set_user_attr(ATTRIBUTE, settings)
        return
    changed = differences(recorded, settings)
    if changed:
        raise SweepError(
            f"Study {study.study_name} was created with other settings ({changed}), so its "
            f"trials would not be comparable: run it with its own settings, or start a new "
            f"study with hydra.sweeper.study_name={study.study_name}-2"
        )
