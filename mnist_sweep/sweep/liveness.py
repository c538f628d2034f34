"""Which RUNNING trials are abandoned: their process is gone, or none ever claimed them."""

from __future__ import annotations

import datetime
import logging
import os
import socket

import optuna
from optuna.trial import TrialState

log = logging.getLogger(__name__)
OWNER = "mnist_sweep.owner"
OWNER_GRACE_S = 10.0


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def process_is_gone(owner: str) -> bool:
    """True when `owner` ("host:pid") is a process of this machine that no longer runs."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def is_abandoned(trial: optuna.trial.FrozenTrial) -> bool:
    """A RUNNING trial whose process died, or that no process claimed within OWNER_GRACE_S
    (killed between asking for it and recording its owner)."""
    owner = trial.system_attrs.get(OWNER)
    if owner is None:
        age = datetime.datetime.now() - trial.datetime_start
        return age.total_seconds() > OWNER_GRACE_S
    return process_is_gone(owner)


def fail_abandoned_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose process died (Ctrl-C, crash, kill); returns them."""
    abandoned = [
        trial.number
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if is_abandoned(trial)
    ]
    for number in abandoned:
        study.tell(number, state=TrialState.FAIL)
    if abandoned:
        log.warning("Marked trials %s FAIL: their process is gone", abandoned)
    return abandoned
