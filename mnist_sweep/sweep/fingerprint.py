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

import json
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, distribution_to_json

from mnist_sweep.sweep.errors import SweepError

ATTRIBUTE = "mnist_sweep.fingerprint"
# Speed and location only: trainer.device and num_threads change floating-point noise at
# most, eval_batch_size only how many images are scored at once.
NOT_COMPARED = ("trainer.device", "trainer.num_threads", "data.eval_batch_size", "data.root",
                "data.source_dir", "data.download", "mlflow.", "sweep.")  # fmt: skip
SHOWN = 4  # differing keys named in the message


def of(cfg: DictConfig, space: dict[str, BaseDistribution]) -> dict[str, str]:
    """The fingerprint of a sweep's composed config and its search space."""
    from mnist_sweep.tracking import flatten

    keys = [key for key in cfg if key != "hydra"]
    run = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True, enum_to_str=True)
    fixed = {key: json.dumps(value) for key, value in flatten(run).items()
             if key not in space and not key.startswith(NOT_COMPARED)}  # fmt: skip
    searched = {f"search space: {name}": distribution_to_json(distribution)
                for name, distribution in space.items()}  # fmt: skip
    return {**fixed, **searched}


def differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`key: then -> now` for each key whose value differs, in key order."""
    return [
        f"{key}: {recorded.get(key, '(absent)')} -> {now.get(key, '(absent)')}"
        for key in sorted(recorded.keys() | now.keys())
        if recorded.get(key) != now.get(key)
    ]


def check_or_record(study: optuna.Study, settings: dict[str, str]) -> None:
    """Record `settings` on a study that has none; stop if the study was made with others."""
    recorded = study.user_attrs.get(ATTRIBUTE)
    if recorded is None:
        study.set_user_attr(ATTRIBUTE, settings)
        return
    changed = differences(recorded, settings)
    if changed:
        more = f" and {len(changed) - SHOWN} more" if len(changed) > SHOWN else ""
        raise SweepError(
            f"Study {study.study_name} was created with other settings ("
            + "; ".join(changed[:SHOWN])
            + more
            + "), so its trials would not be comparable: "
            f"run it with its own settings, or start a new study with "
            f"hydra.sweeper.study_name={study.study_name}-2"
        )
