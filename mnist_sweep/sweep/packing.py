"""How many trials a sweep runs at once, and where: `hydra.sweeper.n_jobs=auto`.

On a CPU, the cores divided by each trial's torch threads (`trainer.num_threads`, 1 when it is
0), so that trials side by side never run more threads than there are cores: more threads
than cores make torch's thread pools spin against each other. On GPUs,
`trials_per_device` trials on each visible device, each trial pinned to one device and the
cores shared among them. A slot's thread count changes only how fast its trial goes (and its
floating-point rounding): a trial is reproducible for a given thread count, which its run
records (`trainer.num_threads`).
"""

from __future__ import annotations

from dataclasses import dataclass

AUTO = "auto"


@dataclass(frozen=True)
class Slot:
    """Where one of the trials in flight runs: its torch threads (None: the trial's own
    setting) and its CUDA device (None: the trial's own choice)."""

    threads: int | None = None
    device: int | None = None

    def overrides(self) -> list[str]:
        """What the slot sets in its trial's config."""
        return [] if self.threads is None else [f"trainer.num_threads={self.threads}"]


def plan(cores: int, threads: int, gpus: int, trials_per_device: int) -> list[Slot]:
    """The slots of n_jobs=auto: `trials_per_device` on each of `gpus` devices (round robin, so
    that fewer trials in flight still spread over every device), else cores // threads on the
    CPU; `threads` is trainer.num_threads (0: one per trial)."""
    if gpus > 0:
        count = gpus * trials_per_device
        share = max(1, cores // count)
        return [Slot(share, slot % gpus) for slot in range(count)]
    threads = threads or 1
    return [Slot(threads)] * max(1, cores // threads)


def fixed(n_jobs: int) -> list[Slot]:
    """The slots of a whole-number n_jobs: each trial keeps its own settings."""
    return [Slot()] * n_jobs
