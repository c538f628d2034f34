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
- trials left RUNNING by a dead worker are marked FAIL (Optuna) and FAILED (MLflow), by
  heartbeat with a database storage, by process id on this machine with the journal file
  (liveness.py), and retried with the same parameters from their last finished epoch, as are
  the trials in flight at Ctrl-C or SIGTERM, up to `max_retries` times (retry.py);
- each trial's sampler is seeded from (seed, trial number), so workers never draw alike;
- a failed trial is told FAIL and replaced, until failures exceed `max_failure_rate * n_trials`;
- Hydra's job number is the Optuna trial number, so output folders never collide on resume;
- comma lists on the command line alone (`optimizer=adam,sgd`) run a plain grid, as Hydra's
  basic sweeper does, with its own MLflow parent run and kept model, apart from the study;
  choice(), interval(), range() and tag() extend the Optuna search;
- before any trial or record, every key is checked and both stores are reached (checks.py);
  a resumed study must have the settings it was created with (fingerprint.py); any error ends
  the sweep in one line (errors.py);
- the sweep's MLflow parent run, its summary and its kept model are made here, not in a Hydra
  callback (whose errors Hydra turns into warnings); the study decides what each trial is,
  and MLflow's runs are set to agree with it at the start and at the end (records.py).

Why the loop is ours and not `Study.optimize(objective, n_jobs=...)` with Optuna's callbacks.
Optuna 5.0's optimize (optuna/study/_optimize.py, storages/_heartbeat.py) cannot carry a Hydra
sweep as this one must run:
- with n_jobs > 1 it runs trials in a ThreadPoolExecutor whose `with` block waits for every
  running trial on exit: Ctrl-C or SIGTERM cannot fail the trials in flight and end the sweep
  until they finish (a trial's job may train for hours, or run in a SLURM job);
- its `n_trials` counts this call's trials, failed ones included, in this process only:
  failed trials are not replaced and cooperating processes overshoot. MaxTrialsCallback
  counts the whole study but runs only after a trial ends, so n_jobs > 1 starts up to
  n_jobs - 1 extra trials; here `missing()` counts trials RUNNING anywhere before each ask;
- its heartbeat thread (HeartbeatThread._record_heartbeat) has no error handling: the first
  database error ends it, and the live trial is failed as stale by another worker;
- it reseeds the sampler per thread, not per trial number.
What Optuna does offer is used as it is: study.ask and study.tell(skip_if_finished=True),
fail_stale_trials with the storage's stale-trial callback, RDBStorage's heartbeats (recorded by
liveness.py), its samplers and pruners, and Hydra's launchers and job returns.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

# Private to Hydra, with no public name: its default launcher (whose in-process jobs cannot
# share the sweep's process: _slots) and its basic sweeper (which runs a plain grid).
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

# The Optuna sweeper plugin's implementation is a private module (the plugin offers no public
# extension point): we extend its class to reuse its parsing of the search space.
from hydra_plugins.hydra_optuna_sweeper._impl import (
    OptunaSweeperImpl,
    create_params_from_overrides,
)
from omegaconf import OmegaConf
from optuna.trial import TrialState

from mnist_sweep import objective, tracking
from mnist_sweep.config import ConfigError, RunConfig, to_run_config
from mnist_sweep.masking import masked
from mnist_sweep.sweep import checks, confirm, fingerprint, liveness, packing, records, retry
from mnist_sweep.sweep.errors import SweepError, describe, one_line_errors
from mnist_sweep.sweep.job import CONFIRM_PREFIX, CONFIRM_STUDY, GRID_PREFIX, Pruned, Told
from mnist_sweep.sweep.progress import TrialsBar
from mnist_sweep.sweep.storage import make_storage, storage_name

log = logging.getLogger(__name__)
WAIT_FOR_OTHERS_S = 2.0


class SweepFailedError(SweepError):
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
        max_retries: int = 3,
        reach_timeout: float = 30.0,
        **options: Any,
    ) -> None:
        # The storage is built in sweep(), once every check has passed: a journal file or a
        # database's tables are never made for a sweep that cannot run.
        super().__init__(storage=None, **options)
        self.storage_config = storage
        self.heartbeats = (heartbeat_interval, grace_period)
        self.pruner, self.max_retries = pruner, max_retries
        self.reach_timeout = reach_timeout

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.identity = sweep_id(config.hydra)

    def _worker_gone(self, study: optuna.Study, trial: optuna.trial.BaseTrial) -> None:
        """Trial `trial` was failed because its worker is gone: retry it, and fail its MLflow
        run (which its retry continues, if its worker saved a training state)."""
        then = self._retry(study, trial.number)
        log.warning("Trial %d marked FAIL: its worker stopped sending heartbeats or is gone; %s",
                    trial.number, then)  # fmt: skip
        try:
            records.mirror_study(self.client, self.experiment, self.identity, study)
        except Exception as error:  # the next start or end of the sweep sets it right
            log.warning("Could not mark trial %d's MLflow run FAILED: %s", trial.number, error)

    def _retry(self, study: optuna.Study, number: int) -> str:
        """Queue a retry of trial `number`, failed because its worker stopped (sweep/retry.py);
        what happens next, in words."""
        try:
            attempt = retry.retry(study, retry.frozen(self.storage, study, number),
                                  self.max_retries)  # fmt: skip
        except Exception as error:  # the study's database away: a new trial replaces it
            log.warning("Could not queue a retry of trial %d: %s", number, describe(error))
            attempt = None
        if attempt is None:
            return "another trial replaces it"
        return (f"retry {attempt} of {self.max_retries} queued, to continue from its last "
                "finished epoch")  # fmt: skip

    def sweep(self, arguments: list[str]) -> None:
        if is_grid(arguments):
            self._sweep_grid(arguments, self._prepare())
            return
        space = self._search_space(arguments)
        run_config = self._prepare()
        study = self._open_study(fingerprint.of(self.config, space[0]))
        with one_line_errors(f"mlflow.tracking_uri={masked(run_config.mlflow.tracking_uri)}"):
            records.mirror_study(self.client, self.experiment, self.identity, study)
            parent = records.sweep_parent(self.client, self.experiment, self.identity, True)
        log.info("Study %s: %d of %d trials to run", study.study_name,
                 missing(study, self.n_trials), self.n_trials)  # fmt: skip
        try:
            with one_line_errors("The sweep stopped"):
                self._run_trials(study, space, self.n_trials, "trial")
                confirmed = self._confirm(study, space, run_config)
        except BaseException as error:
            tracking.release_interrupted(error)  # before close_after_fault writes to MLflow
            records.close_after_fault(self.client, self.experiment, self.identity, study, parent)
            raise
        with one_line_errors("Ending the sweep"):
            self._finish(run_config, study, confirmed)

    def _prepare(self) -> RunConfig:
        """Check the run's config and reach both stores, creating nothing; then the storage
        and the MLflow experiment."""
        from mnist_sweep.data import check_available  # here: keeps torch out of --help

        self._check_packing()
        try:
            run_config = to_run_config(self.config)
            check_available(run_config.data)
        except ConfigError as error:
            raise SweepError(f"Error in the config: {error}") from error
        checks.check_data_root(run_config.data.root)
        checks.probe_storage(self.storage_config, self.reach_timeout)
        checks.probe_tracking(run_config.mlflow.tracking_uri, self.reach_timeout)
        with one_line_errors(f"hydra.sweeper.storage={storage_name(self.storage_config)}"):
            self.storage = make_storage(self.storage_config, *self.heartbeats, self._worker_gone)
        self.liveness = liveness.Liveness(self.storage, self._worker_gone)
        with one_line_errors(f"mlflow.tracking_uri={masked(run_config.mlflow.tracking_uri)}"):
            from mnist_sweep import tracking

            self.client, self.experiment = tracking.client_for(run_config.mlflow)
        return run_config

    def _check_packing(self) -> None:
        """n_jobs=auto counts this machine's cores and GPUs, not those a remote job gets."""
        local = isinstance(self.launcher, (BasicLauncher, JoblibLauncher))
        if self.n_jobs == packing.AUTO and not local:
            raise SweepError(
                f"hydra.sweeper.n_jobs=auto packs this machine with hydra/launcher=joblib; "
                f"with {type(self.launcher).__name__} give the trials in flight as a number"
            )

    def _search_space(self, arguments: list[str]) -> tuple:
        """The search space's distributions, fixed params and overrides; a bad interval or
        choice names its key."""
        # The plugin's private parsing of hydra.sweeper.params and custom_search_space, as
        # the plugin itself calls it.
        self._process_searchspace_config()
        overrides = [*self._parse_sweeper_params_config(), *arguments]
        for override in overrides:
            with one_line_errors(f"hydra.sweeper.params: {override}"):
                create_params_from_overrides([override])
        distributions, fixed, fixed_overrides = create_params_from_overrides(overrides)
        for name in fixed:
            distributions.pop(name, None)
        return distributions, fixed, fixed_overrides

    def _open_study(self, settings: dict[str, str]) -> optuna.Study:
        """The study, created with `settings` as its fingerprint, or resumed if they match."""
        liveness.stop_on_sigterm_as_on_ctrl_c()
        with one_line_errors(f"hydra.sweeper.storage={storage_name(self.storage_config)}"):
            study = self._load_or_create_study()
            fingerprint.check_or_record(study, settings)
            self.liveness.fail_abandoned(study)
        return study

    def _load_or_create_study(self) -> optuna.Study:
        # Loading first: create_study(load_if_exists=True) appends a record to a journal
        # even when the study exists.
        try:
            return optuna.load_study(study_name=self.study_name, storage=self.storage,
                                     sampler=self.sampler, pruner=self.pruner)  # fmt: skip
        except KeyError:
            return optuna.create_study(
                study_name=self.study_name, storage=self.storage, sampler=self.sampler,
                pruner=self.pruner, direction=objective.DIRECTION, load_if_exists=True,
            )  # fmt: skip

    def _confirm(
        self, study: optuna.Study, space: tuple, run_config: RunConfig
    ) -> list[confirm.Candidate]:
        """Train the top configurations again with new seeds (sweep.confirm); the candidates,
        best mean first, or none when confirmation is off."""
        settings = run_config.sweep.confirm
        tops = confirm.top(study, settings.top_k)
        if not tops:
            return []
        seeds = confirm.new_seeds(run_config.trainer.seed, settings.seeds)
        confirmations = optuna.create_study(
            study_name=CONFIRM_STUDY(study.study_name), storage=self.storage,
            sampler=optuna.samplers.RandomSampler(), pruner=optuna.pruners.NopPruner(),
            direction=objective.DIRECTION, load_if_exists=True,
        )  # fmt: skip
        log.info("Confirming the top %d configurations with seeds %s", len(tops), seeds)

        def ask(study_: optuna.Study) -> optuna.Trial:
            confirm.enqueue_missing(study_, tops, seeds)
            return self.liveness.ask(study_)

        distributions, fixed, fixed_overrides = space
        subdir = f"hydra.sweep.subdir={CONFIRM_PREFIX}${{hydra.job.num}}"
        confirm_space = (confirm.space_with_seeds(distributions, seeds), fixed,
                         [*fixed_overrides, subdir])  # fmt: skip
        self._run_trials(confirmations, confirm_space, len(tops) * len(seeds), "confirmation",
                         ask)  # fmt: skip
        records.mirror_study(self.client, self.experiment, self.identity, confirmations,
                             "confirmation")  # fmt: skip
        return confirm.candidates(confirmations, tops)

    def _finish(
        self, run_config: RunConfig, study: optuna.Study, confirmed: list[confirm.Candidate]
    ) -> None:
        """Set MLflow's runs to agree with the study, then the summary and the kept model,
        chosen among the study's COMPLETE trials (the confirmed best mean, if confirmed)."""
        from mnist_sweep.sweep import summary
        from mnist_sweep.sweep.keep import keep_best

        parent = records.sweep_parent(self.client, self.experiment, self.identity, True)
        records.mirror_study(self.client, self.experiment, self.identity, study)
        trials = records.sweep_runs(self.client, self.experiment, self.identity, "trial")
        confirmations = records.sweep_runs(self.client, self.experiment, self.identity,
                                           "confirmation")  # fmt: skip
        records.nest_under(self.client, parent, trials + confirmations)
        summary.log_summary(self.client, parent.info.run_id, trials, study)
        self._save_results(study)
        eligible, basis = records.complete(trials, study), {}
        if confirmed:
            eligible, basis = summary.log_confirmations(
                self.client, parent.info.run_id, eligible, confirmations, confirmed
            )
        keep_best(self.client, eligible, run_config.sweep,
                  Path(self.config.hydra.sweep.dir) / "best", self.identity, basis)  # fmt: skip
        self.client.set_terminated(parent.info.run_id, "FINISHED")

    def _run_trials(
        self, study: optuna.Study, space: tuple, n_trials: int, role: str,
        ask: Callable | None = None,
    ) -> None:  # fmt: skip
        """Keep `slots` trials in flight, asking for the next as soon as one ends (no batch
        waits for its slowest trial), until n_trials are complete or pruned.

        If interrupted (Ctrl-C), the unfinished trials are told FAIL before it stops.
        """
        ask, told = ask or self.liveness.ask, Told(self.identity, study.study_name, role)
        slots, in_flight, failures = self._slots(), {}, 0  # in_flight: trial -> its slot
        trials_bar = TrialsBar(study, n_trials)
        finished: queue.SimpleQueue = queue.SimpleQueue()  # (trial, its JobReturn or error)
        try:
            while True:
                while len(in_flight) < len(slots) and missing(study, n_trials) > 0:
                    slot = min(set(range(len(slots))) - set(in_flight.values()))
                    with interrupts_deferred():
                        in_flight[trial := ask(study)] = slot
                    # The plugin's private step from a trial's params to a job's overrides.
                    overrides = [*self._configure_trials([trial], *space)[0],
                                 *slots[slot].overrides(),
                                 replace(told, device=slots[slot].device).override()]  # fmt: skip
                    log.info("Trial %d: %s%s", trial.number,
                             " ".join(f"{k}={v}" for k, v in trial.params.items()),
                             retried(retry.frozen(self.storage, study, trial.number)))  # fmt: skip
                    self._start(study, trial, overrides, finished, threaded=len(slots) > 1)
                if not in_flight:
                    if not running(study):
                        return
                    # Other processes' trials are in flight: wait, in case one fails and
                    # needs replacing, so that every process ends with n_trials done.
                    time.sleep(WAIT_FOR_OTHERS_S)
                    self.liveness.fail_abandoned(study)
                    continue
                trial, result = finished.get()
                in_flight.pop(trial)
                with interrupts_deferred():
                    if isinstance(result, BrokenProcessPool):
                        # Its worker process died (killed, out of memory): as a worker gone.
                        if liveness.fail(study, trial.number):
                            self._worker_gone(study, trial)
                        continue
                    failures += tell(study, trial, result) is TrialState.FAIL
                trials_bar.update()
                self._check_failures(failures)
        except BaseException:
            for trial in in_flight:
                if liveness.fail(study, trial.number):
                    log.info("Trial %d stopped; %s", trial.number,
                             self._retry(study, trial.number))  # fmt: skip
            raise

    def _slots(self) -> list[packing.Slot]:
        """The trials in flight at once (packing.py): n_jobs of them, or with n_jobs=auto as
        many as the cores or GPUs serve; one when the launcher runs jobs in this process
        (Hydra's basic launcher), since those cannot share it: that one keeps its own threads."""
        if isinstance(self.launcher, BasicLauncher):
            if self.n_jobs != 1:
                log.warning("n_jobs=%s: the basic launcher runs one trial at a time; use "
                            "hydra/launcher=joblib for parallel trials", self.n_jobs)  # fmt: skip
            return packing.fixed(1)
        return packing.fixed(self.n_jobs) if self.n_jobs != packing.AUTO else self._packed()

    def _packed(self) -> list[packing.Slot]:
        """n_jobs=auto: the slots this machine serves, logged once."""
        import torch

        trainer = self.config.trainer
        gpus = torch.cuda.device_count() if trainer.device in ("auto", "cuda") else 0
        slots = packing.plan(os.cpu_count() or 1, trainer.num_threads, gpus,
                             self.config.hydra.sweeper.trials_per_device)  # fmt: skip
        where = f"{gpus} GPU(s), {self.config.hydra.sweeper.trials_per_device} each" if gpus \
            else f"{os.cpu_count()} cores"  # fmt: skip
        log.info("n_jobs=auto: %d trials at once on %s, %d torch thread(s) each", len(slots),
                 where, slots[0].threads)  # fmt: skip
        return slots

    def _start(
        self, study: optuna.Study, trial: optuna.Trial, overrides: Sequence[str],
        finished: queue.SimpleQueue, threaded: bool,
    ) -> None:  # fmt: skip
        """Launch the trial's job with Hydra job number = trial number, in a thread of its own
        if `threaded`; its JobReturn (or the launcher's error) goes to `finished`."""

        def launch() -> None:
            try:
                with self.liveness.heartbeat(study, trial):
                    [result] = self.launcher.launch([overrides], initial_job_idx=trial.number)
            except Exception as error:  # the launcher's own failure: the sweep stops
                result = error
            finished.put((trial, result))

        if threaded:
            # A daemon, so that Ctrl-C ends the sweep without waiting for its jobs.
            threading.Thread(target=launch, name=f"trial_{trial.number}", daemon=True).start()
        else:
            launch()

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
        Path(self.config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(
            OmegaConf.create(
                {"name": "optuna", "best_params": best.params, "best_value": best.value}
            ),
            f"{self.config.hydra.sweep.dir}/optimization_results.yaml",
        )

    def _sweep_grid(self, arguments: list[str], run_config: RunConfig) -> None:
        """The plain grid: its own folder, parent run and kept model, never in the study."""
        from mnist_sweep.sweep.keep import keep_best

        name = GRID_PREFIX + time.strftime("%Y%m%d-%H%M%S")
        log.info("Comma lists only: running the plain grid %s as %s", arguments, name)
        grid_id = f"{self.identity}/{name}"
        parent = records.sweep_parent(self.client, self.experiment, grid_id, True)
        slots = self._slots()  # a grid's batches run on the CPU slots' threads, unpinned
        grid = BasicSweeper(max_batch_size=len(slots))
        grid.hydra_context, grid.config, grid.launcher = (
            self.hydra_context, self.config, self.launcher
        )  # fmt: skip
        grid.sweep([*arguments, f"hydra.sweep.subdir={name}/${{hydra.job.num}}",
                    *slots[0].overrides(), Told(grid_id).override()])  # fmt: skip
        trials = records.sweep_runs(self.client, self.experiment, grid_id, "trial", "FINISHED")
        folder = Path(self.config.hydra.sweep.dir) / name / "best"
        keep_best(self.client, trials, run_config.sweep, folder, grid_id)
        self.client.set_terminated(parent.info.run_id, "FINISHED")


def sweep_id(hydra_cfg: Any) -> str:
    """The study name when the sweeper has one, else the sweep folder."""
    return hydra_cfg.sweeper.get("study_name") or str(Path(hydra_cfg.sweep.dir).resolve())


def retried(trial: optuna.trial.FrozenTrial) -> str:
    """How the trial's log line says it retries earlier attempts."""
    earlier = retry.earlier_attempts(trial)
    return f" (retry of trial {', '.join(map(str, earlier))})" if earlier else ""


def tell(study: optuna.Study, trial: optuna.Trial, result: JobReturn | BaseException) -> TrialState:
    """Record a finished job in the study: COMPLETE, PRUNED or FAIL (a database away for a
    moment is waited for: storage.PatientRDBStorage)."""
    if isinstance(result, BaseException):
        raise SweepError(f"The launcher failed: {result}") from result
    state, value = outcome(trial, result)
    # skip_if_finished: another worker may have failed it as stale (a long pause here).
    told = study.tell(trial, value, state=state, skip_if_finished=True)
    if told.state is not state:
        log.warning("Trial %d ended %s here, but the study had already marked it %s (its "
                    "heartbeat went stale); the study's word stands", trial.number,
                    state.name, told.state.name)  # fmt: skip
    return told.state


def outcome(trial: optuna.Trial, result: JobReturn) -> tuple[TrialState, float | None]:
    """What a job's return says of its trial: PRUNED, FAIL (its error logged) or COMPLETE."""
    if result.status is JobStatus.COMPLETED and isinstance(result.return_value, Pruned):
        # As in Optuna's optimize, a pruned trial's value is its last reported one.
        return TrialState.PRUNED, None
    try:
        value = float(result.return_value)  # a failed job's return_value raises its error
        if not math.isfinite(value):
            raise ValueError(f"objective {objective.METRIC} is {value}")
    except Exception as error:
        log.warning("Trial %d failed: %s", trial.number, error)
        return TrialState.FAIL, None
    return TrialState.COMPLETE, value
