"""The sweep's Hydra callback: its MLflow parent run, then the summary and the kept model.

`SweepCallback` is a Hydra callback (conf/config.yaml lists it); it runs in the process that
started `python run.py -m`, before the first and after the last trial. Hydra instantiates it
for single runs too, so MLflow and the summary's libraries are imported only when a sweep
starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mnist_sweep.config import ConfigError, exit_with, to_run_config
from mnist_sweep.sweep.job import sweep_id


class SweepCallback(Callback):
    """Opens the sweep's parent run; at the end, logs the summary and keeps the best model."""

    def __init__(self) -> None:
        self.started = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mnist_sweep import tracking

        try:
            run_config = to_run_config(config)
        except ConfigError as error:
            exit_with(error)  # before any trial: every trial would fail the same way
        client, experiment = tracking.client_for(run_config.mlflow)
        identity = sweep_id(config.hydra)
        # Runs of trials whose worker is gone are failed by the sweeper with their trials.
        tracking.sweep_parent(client, experiment, identity, create=True)
        self.started = True

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.started:
            return
        from mnist_sweep import tracking
        from mnist_sweep.sweep import summary
        from mnist_sweep.sweep.keep import keep_best

        run_config = to_run_config(config)
        client, experiment = tracking.client_for(run_config.mlflow)
        identity = sweep_id(config.hydra)
        parent = tracking.sweep_parent(client, experiment, identity, create=True)
        trials = tracking.sweep_runs(client, experiment, identity, "trial")
        tracking.nest_under(client, parent, trials)
        summary.log_summary(client, parent.info.run_id, trials, config.hydra)
        finished = [run for run in trials if run.info.status == "FINISHED"]
        keep_best(client, finished, run_config.sweep, Path(config.hydra.sweep.dir) / "best")
        client.set_terminated(parent.info.run_id, "FINISHED")
