"""The study's journal file, which heals instead of breaking for good.

Optuna's journal is one JSON record per line, appended under a lock. A crash or a full disk in
the middle of an append leaves a partial last line; the next append goes after it, and from
then on every load of the study fails on the merged line. Here an append that fails is cut
back to where it began, and on opening, a damaged record (a torn last line, or any line that
is not whole JSON) is set aside in a file beside the journal and the study loads with every
whole record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

log = logging.getLogger(__name__)


class HealingJournalFileBackend(JournalFileBackend):
    """JournalFileBackend whose appends never leave a torn record, and which sets aside one
    that a crash left when it opens."""

    def __init__(self, file_path: str, lock_obj: Any = None) -> None:
        # The lock Optuna would make, kept here: every append and the look below take it, so
        # no other process writes while we look.
        self.path, self.lock = file_path, lock_obj or JournalFileSymlinkLock(file_path)
        super().__init__(file_path, self.lock)
        with self.locked():
            set_aside_damage(Path(file_path))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.lock.acquire()
        try:
            yield
        finally:
            self.lock.release()

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with self.locked():
            size = os.path.getsize(self.path)
            records = "".join(json.dumps(record, separators=(",", ":")) + "\n" for record in logs)
            try:
                with open(self.path, "ab") as journal:
                    journal.write(records.encode())
                    journal.flush()
                    os.fsync(journal.fileno())
            except BaseException:
                # A full disk (or Ctrl-C) mid-write: nothing of these records stays.
                os.truncate(self.path, size)
                raise


def set_aside_damage(path: Path) -> None:
    """Move the lines of `path` that are not whole JSON records to `<path>.damaged-<time>`."""
    content = path.read_bytes()
    lines = content.splitlines(keepends=True)
    damaged = [line for line in lines if not is_whole_record(line)]
    if not damaged:
        return
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    aside.write_bytes(b"".join(damaged))
    whole = b"".join(line for line in lines if is_whole_record(line))
    if lines[-len(damaged) :] == damaged:
        os.truncate(path, len(whole))  # only a torn tail: what precedes it stays in place
    else:
        replacement = path.with_name(f"{path.name}.healing")
        replacement.write_bytes(whole)
        os.replace(replacement, path)
    log.warning(
        "%s: set aside %d damaged record(s), %d bytes (a crash or a full disk during a write) in "
        "%s; the study loads its %d whole records, and a trial whose last update was lost is "
        "failed and run again", path, len(damaged), len(content) - len(whole), aside.name,
        len(lines) - len(damaged),
    )  # fmt: skip


def is_whole_record(line: bytes) -> bool:
    if not line.endswith(b"\n"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
