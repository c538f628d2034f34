"""Which trials a sweep runs: Hydra's Optuna sweeper, made resumable and failure-tolerant.

Differences from `hydra_plugins.hydra_optuna_sweeper` (whose search-space parsing we reuse):
- `n_trials` counts COMPLETE trials in the study (and those RUNNING in other processes), so a
  resumed sweep runs only what is missing and cooperating processes do not overshoot; a
  process whose share is done waits for the others' trials, to replace any that fail;
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
import signal
import time
from collections.abc import Iterator, Sequence
from typing import Any

import optuna
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra_plugins.hydra_optuna_sweeper._impl import (
    OptunaSweeperImpl,
    create_params_from_overrides,
)
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import OmegaConf
from optuna.trial import TrialState

from mnist_sweep.sweep import liveness
from mnist_sweep.sweep.sampling import make_sampler
from mnist_sweep.sweep.storage import make_storage

log = logging.getLogger(__name__)
GRID_SUBDIR = "grid_${now:%Y%m%d-%H%M%S}_${hydra.job.num}"
WAIT_FOR_OTHERS_S = 2.0


class SweepFailedError(RuntimeError):
    """More trials failed than the sweep's max_failure_rate allows."""


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
    """Trials still to ask for: those neither complete nor in flight in another process."""
    states = (TrialState.COMPLETE, TrialState.RUNNING)
    return n_trials - len(study.get_trials(deepcopy=False, states=states))


def consecutive_runs(numbers: list[int]) -> list[slice]:
    """Index slices of `numbers` where each number is one more than the one before."""
    starts = [0] + [i for i in range(1, len(numbers)) if numbers[i] != numbers[i - 1] + 1]
    return [slice(a, b) for a, b in zip(starts, [*starts[1:], len(numbers)], strict=True)]


class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
    def __init__(
        self,
        storage: Any,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        **options: Any,
    ) -> None:
        storage = make_storage(storage, heartbeat_interval, grace_period, self._worker_gone)
        super().__init__(storage=storage, **options)

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
            directions=self._get_directions(), load_if_exists=True,
        )  # fmt: skip
        liveness.fail_abandoned_trials(study, self._worker_gone)
        log.info("Study %s: %d of %d trials to run", study.study_name,
                 missing(study, self.n_trials), self.n_trials)  # fmt: skip
        failures = 0
        while (to_ask := missing(study, self.n_trials)) > 0 or running(study):
            if to_ask <= 0:
                # Other processes' trials are in flight: wait, in case one fails and needs
                # replacing, so that every process ends with n_trials complete.
                time.sleep(WAIT_FOR_OTHERS_S)
                liveness.fail_abandoned_trials(study, self._worker_gone)
                continue
            size = min(self.n_jobs, to_ask)
            failures += self._run_batch(study, size, (distributions, fixed, fixed_overrides))
            if failures > self.max_failure_rate * self.n_trials:
                raise SweepFailedError(
                    f"{failures} trials failed, more than max_failure_rate="
                    f"{self.max_failure_rate} of n_trials={self.n_trials}; see the log above"
                )
        self._save_results(study)

    def _run_batch(self, study: optuna.Study, size: int, space: tuple) -> int:
        """Ask, run and tell `size` trials; returns how many failed.

        If interrupted (Ctrl-C), the batch's unfinished trials are told FAIL before it stops.
        """
        trials: list[optuna.Trial] = []
        try:
            with contextlib.ExitStack() as heartbeats:
                with interrupts_deferred():
                    for _ in range(size):
                        trials.append(liveness.ask(study))
                        heartbeats.enter_context(
                            liveness.heartbeat(study, trials[-1], self._worker_gone)
                        )
                returns = self._launch(trials, self._configure_trials(trials, *space))
                with interrupts_deferred():
                    told = [self._tell(study, t, r) for t, r in zip(trials, returns, strict=True)]
        except BaseException:
            for trial in trials:
                if study._storage.get_trial(trial._trial_id).state is TrialState.RUNNING:
                    study.tell(trial.number, state=TrialState.FAIL)
            raise
        return told.count(False)

    def _launch(
        self, trials: list[optuna.Trial], overrides: Sequence[Sequence[str]]
    ) -> list[JobReturn]:
        """Run the trials with Hydra job numbers equal to their trial numbers."""
        numbers = [trial.number for trial in trials]
        returns: list[JobReturn] = []
        for run in consecutive_runs(numbers):
            returns += self.launcher.launch(overrides[run], initial_job_idx=numbers[run][0])
        return returns

    def _tell(self, study: optuna.Study, trial: optuna.Trial, result: JobReturn) -> bool:
        """Record a finished job in the study; False if it failed."""
        try:
            value = float(result.return_value)
            if not math.isfinite(value):
                raise ValueError(f"objective is {value}")
        except Exception as error:
            log.warning("Trial %d failed: %s", trial.number, error)
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            return False
        # skip_if_finished: another worker may have failed it as stale (a long pause here).
        study.tell(trial, value, skip_if_finished=True)
        return True

    def _save_results(self, study: optuna.Study) -> None:
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


class ResumableOptunaSweeper(OptunaSweeper):
    """Hydra's OptunaSweeper with the resumable implementation above.

    `storage` may also be a config with a `_target_`, such as Optuna's JournalStorage.
    """

    def __init__(self, sampler: Any, **options: Any) -> None:
        self.sweeper = ResumableOptunaSweeperImpl(sampler=make_sampler(sampler), **options)


def register() -> None:
    """Let Hydra instantiate ResumableOptunaSweeper (it lives outside hydra_plugins)."""
    Plugins.instance().register(ResumableOptunaSweeper)
