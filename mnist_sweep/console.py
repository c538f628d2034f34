"""The terminal shared by log lines and progress bars (a run's epochs, a sweep's trials).

conf/config.yaml makes `ConsoleHandler` Hydra's console handler: it writes through tqdm, so
that log lines print above the bars instead of breaking them, and leaves a line that a bar
already shows to the log file.
"""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

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


class EpochBar:
    """A run's epochs: a bar on a terminal, and a line each to `log` (which the terminal leaves
    to the log file while the bar shows it)."""

    def __init__(self, epochs: int, log: logging.Logger, leave: bool = True, done: int = 0) -> None:
        self.epochs, self.log = epochs, log
        # A trial's bar goes when it ends (leave=False), in the sweep's process below the
        # sweep's bar and in a launcher's worker alike; a single run's stays.
        self.bar = (
            tqdm(total=epochs, initial=done, unit="epoch", leave=leave) if bars_shown() else None
        )

    def __enter__(self) -> EpochBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def show(self, epoch: int, values: dict[str, float]) -> None:
        summary = " ".join(f"{key}={value:.4f}" for key, value in values.items())
        self.log.info("epoch %d/%d %s", epoch, self.epochs, summary, extra=SHOWN_ON_BAR)
        if self.bar is not None:
            self.bar.set_postfix_str(summary)
            self.bar.update()
