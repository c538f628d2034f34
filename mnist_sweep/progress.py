"""Progress on a terminal as bars (one per run, one for a sweep's trials), in log files as lines.

conf/config.yaml makes `ConsoleHandler` Hydra's console handler: it writes through tqdm, so
that log lines print above the bars instead of breaking them, and leaves a line that a bar
already shows to the log file.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)
# `extra` of a log record that a progress bar also shows.
SHOWN_ON_BAR = {"shown_on_bar": True}


def bars_shown() -> bool:
    """Bars go to stderr, and only to a terminal."""
    return sys.stderr.isatty()


class ConsoleHandler(logging.StreamHandler):
    """Hydra's console handler, made to share the terminal with tqdm's bars."""

    def emit(self, record: logging.LogRecord) -> None:
        on_terminal = self.stream.isatty() and bars_shown()
        if on_terminal and getattr(record, "shown_on_bar", False):
            return
        if not on_terminal:
            super().emit(record)
            return
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


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
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        done = sum(trial.state in (TrialState.COMPLETE, TrialState.PRUNED) for trial in trials)
        failed = sum(trial.state is TrialState.FAIL for trial in trials)
        complete = [trial for trial in trials if trial.state is TrialState.COMPLETE]
        summary = f"{failed} failed"
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
