"""The sweeper as Hydra sees it: a light class whose implementation is imported on first use.

Hydra imports a sweeper's class to compose `--cfg`, `--help` and tab completion; like Hydra's
own plugins, this module keeps Optuna and the sweep machinery out of those paths and imports
them only when a sweep is built.
"""

from __future__ import annotations

from typing import Any

from hydra.core.plugins import Plugins
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper


class ResumableOptunaSweeper(OptunaSweeper):
    """Hydra's OptunaSweeper with the resumable implementation of `mnist_sweep.sweep.sweeper`.

    `storage` may also be a config with a `_target_`, such as Optuna's JournalStorage, or a
    database URL; `pruner` is an Optuna pruner's config with `_target_` (see
    mnist_sweep.sweep.pruning).
    """

    def __init__(self, sampler: Any, pruner: Any = None, **options: Any) -> None:
        from mnist_sweep.sweep.pruning import make_pruner
        from mnist_sweep.sweep.sampling import make_sampler
        from mnist_sweep.sweep.sweeper import ResumableOptunaSweeperImpl

        self.sweeper = ResumableOptunaSweeperImpl(
            sampler=make_sampler(sampler), pruner=make_pruner(pruner), **options
        )


def register() -> None:
    """Let Hydra instantiate ResumableOptunaSweeper (it lives outside hydra_plugins)."""
    Plugins.instance().register(ResumableOptunaSweeper)
