"""Which RUNNING trials are abandoned, and failing them so that another worker replaces them.

With a database storage, liveness is Optuna's heartbeat: the worker that asked for a trial
records a heartbeat of it every `heartbeat_interval` seconds until it tells the result, and any
worker, on any host, fails a trial silent for longer than `grace_period`. The journal file has
no heartbeats; there a trial is abandoned when its owner ("host:pid") is a process of this
machine that no longer runs, which is what one machine sharing a journal file needs.
Either way a trial nobody claimed within OWNER_GRACE_S (its worker died between asking for it
and recording its owner) is abandoned too.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from mnist_sweep.sweep.errors import describe

log = logging.getLogger(__name__)
OWNER = "mnist_sweep.owner"
OWNER_GRACE_S = 10.0
OnFailed = Callable[[optuna.Study, FrozenTrial], None]


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


def stop_on_sigterm_as_on_ctrl_c() -> None:
    """SIGTERM (scancel, SLURM preemption or time limit, docker stop) ends the sweep as Ctrl-C
    does: the trials in flight are failed at once, instead of after the grace period."""

    def interrupt(number: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {number}")

    signal.signal(signal.SIGTERM, interrupt)


def heartbeat_interval(storage: Any) -> int | None:
    """Seconds between a running trial's heartbeats, None when the storage has none (a
    journal file)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return interval() if interval is not None else None


def trial_id(storage: Any, study: optuna.Study, number: int) -> int:
    """The storage's id of trial `number` (what heartbeats are recorded against), through the
    storage's public lookups: Optuna keeps a trial's and a study's ids private."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


class Liveness:
    """The liveness of a sweep's trials in `storage` (the storage its studies were opened
    with): heartbeats of this process's trials, and failing other workers' abandoned ones,
    each failed trial passed to `on_failed`.

    Optuna drives heartbeats only from inside Study.optimize, which cannot carry a Hydra sweep
    (sweeper.py); this is what optimize does around each trial, for our loop.
    """

    def __init__(self, storage: Any, on_failed: OnFailed) -> None:
        self.storage, self.on_failed = storage, on_failed
        self.interval = heartbeat_interval(storage)

    def ask(self, study: optuna.Study) -> optuna.Trial:
        """A new trial, with its first heartbeat recorded and this process as its owner."""
        with warnings.catch_warnings():
            # Optuna warns that heartbeats are meant for Study.optimize; heartbeat() below is
            # what optimize does around each trial, for our ask-and-tell loop.
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            trial = study.ask()
        if self.interval:
            self.storage.record_heartbeat(trial_id(self.storage, study, trial.number))
        trial.set_user_attr(OWNER, this_process())
        return trial

    @contextlib.contextmanager
    def heartbeat(self, study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
        """A heartbeat of `trial` every interval while the block runs (nothing for a journal).

        Optuna's own heartbeat thread ends at its first database error, after which a live
        trial goes stale; this one keeps beating through an outage. Meanwhile other workers'
        stale trials are failed at the same pace, so that a dead worker's trial is failed
        within its grace period even while every live worker is busy training.
        """
        if not self.interval:
            yield
            return
        stop = threading.Event()
        beating = (self.storage, trial_id(self.storage, study, trial.number), trial.number)
        threads = [
            threading.Thread(target=beat, args=(*beating, self.interval, stop), daemon=True,
                             name=f"heartbeat-{trial.number}"),
            threading.Thread(target=self.watch, args=(study, stop), daemon=True,
                             name="stale-trials"),
        ]  # fmt: skip
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            for thread in threads:
                thread.join()

    def watch(self, study: optuna.Study, stop: threading.Event) -> None:
        """Fail abandoned trials every heartbeat interval until `stop` is set."""
        while not stop.wait(self.interval):
            try:
                self.fail_abandoned(study)
            except Exception as error:  # the database may be away for a moment; try later
                log.debug("Could not look for other workers' stale trials: %s", describe(error))

    def fail_abandoned(self, study: optuna.Study) -> None:
        """Mark FAIL the RUNNING trials whose worker is gone, calling `on_failed` for each.

        Heartbeat-stale trials go through Optuna's `fail_stale_trials`, which calls the
        storage's stale-trial callback (make_storage sets it to `on_failed` too).
        """
        if self.interval:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fail_stale_trials(study)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if is_abandoned(trial, by_pid=not self.interval) and fail(study, trial.number):
                self.on_failed(study, trial)


def beat(storage: Any, trial_id: int, number: int, interval: float, stop: threading.Event) -> None:
    """Record trial `number`'s heartbeat every `interval` s until `stop`, through database
    outages."""
    missed = 0
    while not stop.wait(interval):
        try:
            storage.record_heartbeat(trial_id)
        except Exception as error:
            missed += 1
            if missed == 1:
                log.warning("Trial %d's heartbeat missed: the study's database is unreachable "
                            "(%s); still beating", number, describe(error))  # fmt: skip
            continue
        if missed:
            log.info("Trial %d's heartbeat recorded again after %d missed", number, missed)
            missed = 0


def is_abandoned(trial: FrozenTrial, by_pid: bool) -> bool:
    """Nobody claimed it within OWNER_GRACE_S, or (`by_pid`) its process here is gone."""
    owner = trial.user_attrs.get(OWNER)
    if owner is None:
        age = datetime.datetime.now() - trial.datetime_start
        return age.total_seconds() > OWNER_GRACE_S
    return by_pid and process_is_gone(owner)


def fail(study: optuna.Study, number: int) -> bool:
    """Tell trial `number` FAIL unless another worker already ended it; True if we did."""
    try:
        study.tell(number, state=TrialState.FAIL)
    except (RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
        return False
    return True
