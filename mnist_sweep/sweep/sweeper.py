"""Which trials a sweep runs: Hydra's Optuna sweeper, made resumable and failure-tolerant.

Differences from `hydra_plugins.hydra_optuna_sweeper` (whose search-space parsing we reuse):
- `n_trials` counts COMPLETE trials in the study (and those RUNNING in other processes), so a
  resumed sweep runs only what is missing and cooperating processes do not overshoot; a
  process whose share is done waits for the others' trials, to replace any that fail;
- trials left RUNNING by a dead process on this machine are marked FAIL when a sweep starts;
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

import optuna
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
from mnist_sweep.sweep.liveness import OWNER, fail_abandoned_trials, this_process

log = logging.getLogger(__name__)
GRID_SUBDIR = "grid_${now:%Y%m%d-%H%M%S}_${hydra.job.num}"
WAIT_FOR_OTHERS_S = 2.0


class SweepFailedError(CompactHydraException):
    """More trials failed than the sweep's max_failure_rate allows (Hydra prints the message
    alone, the traceback only with HYDRA_FULL_ERROR=1)."""


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, so that asking for a trial and recording who runs it,
    or telling a finished trial's result, is never cut in half."""
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
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
        study = optuna.create_study(
            study_name=self.study_name, storage=self.storage, sampler=self.sampler,
            directions=self._get_directions(), load_if_exists=True,
        )  # fmt: skip
        fail_abandoned_trials(study)
        log.info("Study %s: %d of %d trials to run", study.study_name,
                 missing(study, self.n_trials), self.n_trials)  # fmt: skip
        trials_bar = TrialsBar(study, self.n_trials)
        failures = 0
        while (to_ask := missing(study, self.n_trials)) > 0 or running(study):
            if to_ask <= 0:
                # Other processes' trials are in flight: wait, in case one fails and needs
                # replacing, so that every process ends with n_trials complete.
                time.sleep(WAIT_FOR_OTHERS_S)
                fail_abandoned_trials(study)
                continue
            size = min(self.n_jobs, to_ask)
            failures += self._run_batch(study, size, (distributions, fixed, fixed_overrides))
            trials_bar.update()
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
            with interrupts_deferred():
                for _ in range(size):
                    trials.append(study.ask())
                    study._storage.set_trial_system_attr(
                        trials[-1]._trial_id, OWNER, this_process()
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
            study.tell(trial, state=TrialState.FAIL)
            return False
        study.tell(trial, value)
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
