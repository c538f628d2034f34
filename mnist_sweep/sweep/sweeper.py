"""Which trials a sweep runs: Hydra's Optuna sweeper, made resumable and failure-tolerant.

Differences from `hydra_plugins.hydra_optuna_sweeper` (whose search-space parsing we reuse):
- `n_trials` counts COMPLETE and PRUNED trials in the study (and those RUNNING in other
  processes), so a resumed sweep runs only what is missing and cooperating processes do not
  overshoot; a process whose share is done waits for the others' trials, to replace any that
  fail;
- `pruner` (an Optuna pruner) lets each job stop its trial early (mnist_sweep.sweep.pruning);
  the job's TrialPruned comes back in its JobReturn and the trial is told PRUNED;
- up to `n_jobs` trials are in flight, each launched on its own as soon as a slot frees, rather
  than in batches that wait for their slowest (or longest unpruned) trial;
- trials left RUNNING by a dead worker are marked FAIL (Optuna) and FAILED (MLflow) and
  replaced: by heartbeat with a database storage, by process id on this machine with the
  journal file (liveness.py);
- each trial's sampler is seeded from (seed, trial number), so workers never draw alike;
- a failed trial is told FAIL and replaced, until failures exceed `max_failure_rate * n_trials`;
- Hydra's job number is the Optuna trial number, so output folders never collide on resume;
- comma lists on the command line alone (`optimizer=adam,sgd`) run a plain grid, as Hydra's
  basic sweeper does; choice(), interval(), range() and tag() extend the Optuna search.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import optuna
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.core.utils import JobReturn
from hydra.errors import CompactHydraException
from hydra_plugins.hydra_optuna_sweeper._impl import (
    OptunaSweeperImpl,
    create_params_from_overrides,
)
from omegaconf import OmegaConf
from optuna.trial import TrialState

from mnist_sweep.progress import TrialsBar
from mnist_sweep.sweep import liveness
from mnist_sweep.sweep.job import GRID_PREFIX
from mnist_sweep.sweep.storage import make_storage

log = logging.getLogger(__name__)
GRID_SUBDIR = GRID_PREFIX + "${now:%Y%m%d-%H%M%S}_${hydra.job.num}"
WAIT_FOR_OTHERS_S = 2.0


class SweepFailedError(CompactHydraException):
    """More trials failed than the sweep's max_failure_rate allows (Hydra prints the message
    alone, the traceback only with HYDRA_FULL_ERROR=1)."""


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (and SIGTERM) until the block ends, so that asking for a trial and recording
    who runs it, or telling a finished trial's result, is never cut in half."""
    received: list[int] = []
    previous = {
        number: signal.signal(number, lambda number, frame: received.append(number))
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        raise KeyboardInterrupt


def is_grid(arguments: list[str]) -> bool:
    """True when the command line sweeps only with comma lists (`a=1,2 b=x,y`)."""
    parsed = OverridesParser.create().parse_overrides(arguments)
    sweeps = [override for override in parsed if override.is_sweep_override()]
    return bool(sweeps) and all(
        isinstance(override.value(), ChoiceSweep) and override.value().simple_form
        for override in sweeps
    )


def running(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def missing(study: optuna.Study, n_trials: int) -> int:
    """Trials still to ask for: those neither done (complete or pruned, as in Optuna's
    optimize) nor in flight in any process."""
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return n_trials - len(study.get_trials(deepcopy=False, states=states))


class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
    def __init__(
        self,
        storage: Any,
        pruner: optuna.pruners.BasePruner | None = None,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        **options: Any,
    ) -> None:
        storage = make_storage(storage, heartbeat_interval, grace_period, self._worker_gone)
        super().__init__(storage=storage, **options)
        self.pruner = pruner

    def _worker_gone(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Trial `trial` was failed because its worker is gone: fail its MLflow run too."""
        from mnist_sweep import tracking
        from mnist_sweep.config import to_run_config
        from mnist_sweep.sweep.job import sweep_id

        log.warning("Marked trial %d FAIL: its worker is gone", trial.number)
        try:
            tracking.fail_trial_runs(
                to_run_config(self.config).mlflow, sweep_id(self.config.hydra), trial.number
            )
        except Exception as error:  # the study goes on; the run stays RUNNING in MLflow
            log.warning("Could not mark trial %d's MLflow run FAILED: %s", trial.number, error)

    def sweep(self, arguments: list[str]) -> None:
        if is_grid(arguments):
            self._sweep_grid(arguments)
            return
        self._process_searchspace_config()
        distributions, fixed, fixed_overrides = create_params_from_overrides(
            [*self._parse_sweeper_params_config(), *arguments]
        )
        for name in fixed:
            distributions.pop(name, None)
        liveness.stop_on_sigterm_as_on_ctrl_c()
        study = optuna.create_study(
            study_name=self.study_name, storage=self.storage, sampler=self.sampler,
            pruner=self.pruner, directions=self._get_directions(), load_if_exists=True,
        )  # fmt: skip
        liveness.fail_abandoned_trials(study, self._worker_gone)
        log.info("Study %s: %d of %d trials to run", study.study_name,
                 missing(study, self.n_trials), self.n_trials)  # fmt: skip
        self._run_trials(study, (distributions, fixed, fixed_overrides))
        self._save_results(study)

    def _run_trials(self, study: optuna.Study, space: tuple) -> None:
        """Keep `slots` trials in flight, asking for the next as soon as one ends (no batch
        waits for its slowest trial), until n_trials are complete or pruned.

        If interrupted (Ctrl-C), the unfinished trials are told FAIL before it stops.
        """
        slots, in_flight, failures = self._slots(), set(), 0
        trials_bar = TrialsBar(study, self.n_trials)
        finished: queue.SimpleQueue = queue.SimpleQueue()  # (trial, its JobReturn or error)
        try:
            while True:
                while len(in_flight) < slots and missing(study, self.n_trials) > 0:
                    with interrupts_deferred():
                        in_flight.add(trial := liveness.ask(study))
                    overrides = self._configure_trials([trial], *space)[0]
                    self._start(study, trial, overrides, finished, threaded=slots > 1)
                if not in_flight:
                    if not running(study):
                        return
                    # Other processes' trials are in flight: wait, in case one fails and
                    # needs replacing, so that every process ends with n_trials done.
                    time.sleep(WAIT_FOR_OTHERS_S)
                    liveness.fail_abandoned_trials(study, self._worker_gone)
                    continue
                trial, result = finished.get()
                in_flight.remove(trial)
                with interrupts_deferred():
                    failures += self._tell(study, trial, result) is TrialState.FAIL
                trials_bar.update()
                self._check_failures(failures)
        except BaseException:
            for trial in in_flight:
                if study._storage.get_trial(trial._trial_id).state is TrialState.RUNNING:
                    study.tell(trial.number, state=TrialState.FAIL)
            raise

    def _slots(self) -> int:
        """Trials in flight at once: n_jobs, or one when the launcher runs jobs in this
        process (Hydra's basic launcher), since those cannot share it."""
        if isinstance(self.launcher, BasicLauncher):
            if self.n_jobs > 1:
                log.warning("n_jobs=%d: the basic launcher runs one trial at a time; use "
                            "hydra/launcher=joblib for parallel trials", self.n_jobs)  # fmt: skip
            return 1
        return self.n_jobs

    def _start(
        self, study: optuna.Study, trial: optuna.Trial, overrides: Sequence[str],
        finished: queue.SimpleQueue, threaded: bool,
    ) -> None:  # fmt: skip
        """Launch the trial's job with Hydra job number = trial number, in a thread of its own
        if `threaded`; its JobReturn (or the launcher's error) goes to `finished`."""

        def launch() -> None:
            try:
                with liveness.heartbeat(study, trial, self._worker_gone):
                    [result] = self.launcher.launch([overrides], initial_job_idx=trial.number)
            except Exception as error:  # the launcher's own failure: the sweep stops
                result = error
            finished.put((trial, result))

        if threaded:
            # A daemon, so that Ctrl-C ends the sweep without waiting for its jobs.
            threading.Thread(target=launch, name=f"trial_{trial.number}", daemon=True).start()
        else:
            launch()

    def _tell(
        self, study: optuna.Study, trial: optuna.Trial, result: JobReturn | BaseException
    ) -> TrialState:
        """Record a finished job in the study: COMPLETE, PRUNED or FAIL."""
        if isinstance(result, BaseException):
            raise result
        # Read before `return_value`, which would log a pruned job as an error.
        if isinstance(result._return_value, optuna.TrialPruned):
            # As in Optuna's optimize, a pruned trial's value is its last reported one.
            study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            return TrialState.PRUNED
        try:
            value = float(result.return_value)
            if not math.isfinite(value):
                raise ValueError(f"objective is {value}")
        except Exception as error:
            log.warning("Trial %d failed: %s", trial.number, error)
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            return TrialState.FAIL
        # skip_if_finished: another worker may have failed it as stale (a long pause here).
        study.tell(trial, value, skip_if_finished=True)
        return TrialState.COMPLETE

    def _check_failures(self, failures: int) -> None:
        if failures > self.max_failure_rate * self.n_trials:
            raise SweepFailedError(
                f"{failures} trials failed, more than max_failure_rate="
                f"{self.max_failure_rate} of n_trials={self.n_trials}; see the log above"
            )

    def _save_results(self, study: optuna.Study) -> None:
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            log.warning("Study %s has no complete trial (all pruned or failed)", study.study_name)
            return
        best = study.best_trial
        log.info("Best value %s with %s", best.value, best.params)
        OmegaConf.save(
            OmegaConf.create(
                {"name": "optuna", "best_params": best.params, "best_value": best.value}
            ),
            f"{self.config.hydra.sweep.dir}/optimization_results.yaml",
        )

    def _sweep_grid(self, arguments: list[str]) -> None:
        log.info("Comma lists only: running the plain grid %s", arguments)
        grid = BasicSweeper(max_batch_size=self.n_jobs)
        grid.hydra_context, grid.config, grid.launcher = (
            self.hydra_context, self.config, self.launcher
        )  # fmt: skip
        # Its own folders, so a grid never overwrites the trial_N folders of an Optuna study.
        grid.sweep([*arguments, f"hydra.sweep.subdir={GRID_SUBDIR}"])
