"""Progress: bars on a terminal, lines in log files, log lines never breaking a bar."""

from __future__ import annotations

import io
import logging

import optuna

from mnist_sweep import console
from mnist_sweep.sweep import progress, retry


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def emitted(stream: io.StringIO, bars: bool, monkeypatch, **extra: bool) -> str:
    monkeypatch.setattr(console, "bars_shown", lambda: bars)
    handler = console.ConsoleHandler(stream)
    handler.emit(logging.makeLogRecord({"msg": "epoch 1/6", **extra}))
    return stream.getvalue()


def test_a_line_that_a_bar_shows_is_left_to_the_log_file(monkeypatch) -> None:
    assert emitted(Terminal(), True, monkeypatch, **console.SHOWN_ON_BAR) == ""
    assert emitted(Terminal(), True, monkeypatch) == "epoch 1/6\n"
    # Without a bar, or into a file, every line is written.
    assert emitted(Terminal(), False, monkeypatch, **console.SHOWN_ON_BAR) == "epoch 1/6\n"
    assert emitted(io.StringIO(), True, monkeypatch, **console.SHOWN_ON_BAR) == "epoch 1/6\n"


def test_trials_bar_logs_a_line_per_update_without_a_terminal(monkeypatch, caplog) -> None:
    monkeypatch.setattr(progress, "bars_shown", lambda: False)
    study = optuna.create_study(direction="maximize")
    bar = progress.TrialsBar(study, n_trials=3)
    study.tell(study.ask(), 0.9)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    stopped = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(stopped, state=optuna.trial.TrialState.FAIL)
    retry.retry(study, study.trials[stopped.number], max_retries=1)  # its worker stopped
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        bar.update()
    lines = [record.getMessage() for record in caplog.records if record.name == progress.__name__]
    assert lines == ["1 of 3 trials done, best 0.9000 (trial 0), 1 failed, 1 retried"]


def test_trials_bar_counts_done_trials_on_a_terminal(monkeypatch) -> None:
    monkeypatch.setattr(progress, "bars_shown", lambda: True)
    study = optuna.create_study(direction="maximize")
    study.tell(study.ask(), 0.5)  # a resumed study: one trial already done
    bar = progress.TrialsBar(study, n_trials=2)
    assert bar.bar.n == 1
    study.tell(study.ask(), 0.7)
    bar.update()
    assert bar.bar.n == 2 and "best 0.7000 (trial 1)" in bar.bar.postfix
    assert bar.bar.disable  # closed once n_trials are done
