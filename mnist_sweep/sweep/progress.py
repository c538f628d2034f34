"""A sweep's progress: its finished trials against n_trials, as a bar on a terminal (below
which each trial's epoch bar comes and goes), else as a log line per finished trial."""

from __future__ import annotations

import logging

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from mnist_sweep.console import bars_shown
from mnist_sweep.sweep.retry import earlier_attempts

log = logging.getLogger(__name__)


class TrialsBar:
    """A sweep's finished trials against n_trials: a bar on a terminal, else a log line each."""

    def __init__(self, study: optuna.Study, n_trials: int) -> None:
        self.study, self.n_trials = study, n_trials
        self.bar = None
        if bars_shown():
            self.bar = tqdm(total=n_trials, unit="trial", desc=f"study {study.study_name}")
            self.update()  # a resumed sweep starts with its finished trials

    def update(self) -> None:
        """Show the study as it is now: trials done (complete or pruned), failed, best."""
        trials = self.study.get_trials(deepcopy=False)
        done = sum(trial.state in (TrialState.COMPLETE, TrialState.PRUNED) for trial in trials)
        retried = {number for trial in trials for number in earlier_attempts(trial)}
        failed = sum(t.state is TrialState.FAIL and t.number not in retried for t in trials)
        complete = [trial for trial in trials if trial.state is TrialState.COMPLETE]
        summary = f"{failed} failed" + (f", {len(retried)} retried" if retried else "")
        if complete:
            best = self.study.best_trial
            summary = f"best {best.value:.4f} (trial {best.number}), {summary}"
        if self.bar is None:
            log.info("%d of %d trials done, %s", done, self.n_trials, summary)
            return
        self.bar.n = min(done, self.n_trials)
        self.bar.set_postfix_str(summary)
        if done >= self.n_trials:
            self.bar.close()
