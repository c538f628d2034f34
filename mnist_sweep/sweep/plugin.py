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
        # Hydra wraps an error raised here in a message of its own: the sweeper is built in
        # setup(), where a bad key can end the sweep in one line.
        self.options = {"sampler": sampler, "pruner": pruner, **options}

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from mnist_sweep import objective
        from mnist_sweep.sweep import checks
        from mnist_sweep.sweep.errors import one_line_errors
        from mnist_sweep.sweep.pruning import make_pruner
        from mnist_sweep.sweep.sampling import make_sampler
        from mnist_sweep.sweep.sweeper import ResumableOptunaSweeperImpl

        checks.check_sweeper(config.hydra.sweeper, objective.DIRECTION)
        options = dict(self.options)
        options.pop("trials_per_device")  # read from the config when n_jobs=auto packs GPUs
        with one_line_errors("hydra.sweeper.sampler"):
            options["sampler"] = make_sampler(options["sampler"])
        with one_line_errors("hydra.sweeper.pruner"):
            options["pruner"] = make_pruner(options["pruner"])
        self.sweeper = ResumableOptunaSweeperImpl(**options)
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function,
                           config=config)  # fmt: skip


def register() -> None:
    """Let Hydra instantiate ResumableOptunaSweeper (it lives outside hydra_plugins), and make
    its schema `hydra/sweeper: resumable_optuna` available to conf/config.yaml's defaults."""
    from mnist_sweep.sweep.schema import register_schema

    Plugins.instance().register(ResumableOptunaSweeper)
    register_schema()
