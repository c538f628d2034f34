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


def heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between a running trial's heartbeats, None when the storage has none.

    Study._storage is private, but Optuna offers no public way to reach a study's storage
    (its heartbeats are otherwise driven only from inside Study.optimize). An RDBStorage
    reaches a study wrapped in a cache that passes heartbeats on, so it is asked, not typed.
    """
    interval = getattr(study._storage, "get_heartbeat_interval", None)
    return interval() if interval is not None else None


def ask(study: optuna.Study) -> optuna.Trial:
    """A new trial, with its first heartbeat recorded and this process as its owner."""
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for Study.optimize; heartbeat() below is
        # what optimize does around each trial, for our ask-and-tell loop.
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        trial = study.ask()
    if heartbeat_interval(study):
        study._storage.record_heartbeat(trial._trial_id)
    trial.set_user_attr(OWNER, this_process())
    return trial


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial, on_failed: OnFailed) -> Iterator[None]:
    """A heartbeat of `trial` every interval while the block runs (nothing for a journal).

    Optuna's own heartbeat thread ends at its first database error, after which a live
    trial goes stale; this one keeps beating through an outage. Meanwhile other workers'
    stale trials are failed at the same pace, so that a dead worker's trial is failed within
    its grace period even while every live worker is busy training.
    """
    interval = heartbeat_interval(study)
    if not interval:
        yield
        return
    stop = threading.Event()
    threads = [
        threading.Thread(target=beat, args=(study, trial, interval, stop), daemon=True,
                         name=f"heartbeat-{trial.number}"),
        threading.Thread(target=watch, args=(study, on_failed, interval, stop), daemon=True,
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


def beat(study: optuna.Study, trial: optuna.Trial, interval: int, stop: threading.Event) -> None:
    """Record `trial`'s heartbeat every `interval` s until `stop`, through database outages."""
    missed = 0
    while not stop.wait(interval):
        try:
            study._storage.record_heartbeat(trial._trial_id)
        except Exception as error:
            missed += 1
            if missed == 1:
                log.warning("Trial %d's heartbeat missed: the study's database is unreachable "
                            "(%s); still beating", trial.number, describe(error))  # fmt: skip
            continue
        if missed:
            log.info("Trial %d's heartbeat recorded again after %d missed", trial.number, missed)
            missed = 0


def watch(study: optuna.Study, on_failed: OnFailed, interval: int, stop: threading.Event) -> None:
    """Fail abandoned trials every heartbeat interval until `stop` is set."""
    while not stop.wait(interval):
        try:
            fail_abandoned_trials(study, on_failed)
        except Exception as error:  # the database may be away for a moment; try again later
            log.debug("Could not look for other workers' stale trials: %s", describe(error))


def is_abandoned(trial: FrozenTrial, by_pid: bool) -> bool:
    """Nobody claimed it within OWNER_GRACE_S, or (`by_pid`) its process here is gone."""
    owner = trial.user_attrs.get(OWNER)
    if owner is None:
        age = datetime.datetime.now() - trial.datetime_start
        return age.total_seconds() > OWNER_GRACE_S
    return by_pid and process_is_gone(owner)


def fail_abandoned_trials(study: optuna.Study, on_failed: OnFailed) -> None:
    """Mark FAIL the RUNNING trials whose worker is gone, calling `on_failed` for each.

    Heartbeat-stale trials go through Optuna's `fail_stale_trials`, which calls the
    storage's stale-trial callback (make_storage sets it to `on_failed` too).
    """
    heartbeats = bool(heartbeat_interval(study))
    if heartbeats:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fail_stale_trials(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_abandoned(trial, by_pid=not heartbeats) and fail(study, trial.number):
            on_failed(study, study._storage.get_trial(trial._trial_id))


def fail(study: optuna.Study, number: int) -> bool:
    """Tell trial `number` FAIL unless another worker already ended it; True if we did."""
    try:
        study.tell(number, state=TrialState.FAIL)
    except (RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
        return False
    return True
