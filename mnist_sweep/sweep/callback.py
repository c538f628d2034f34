"""The sweep's Hydra callback: its MLflow parent run, then the summary and the kept model.

`SweepCallback` is a Hydra callback (conf/config.yaml lists it); it runs in the process that
started `python run.py -m`, before the first and after the last trial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mnist_sweep import tracking
from mnist_sweep.config import to_run_config
from mnist_sweep.sweep import summary
from mnist_sweep.sweep.job import sweep_id
from mnist_sweep.sweep.keep import keep_best


class SweepCallback(Callback):
    """Opens the sweep's parent run; at the end, logs the summary and keeps the best model."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        client, experiment = tracking.client_for(to_run_config(config).mlflow)
        identity = sweep_id(config.hydra)
        # Runs of trials whose worker is gone are failed by the sweeper with their trials.
        tracking.sweep_parent(client, experiment, identity, create=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        run_config = to_run_config(config)
        client, experiment = tracking.client_for(run_config.mlflow)
        identity = sweep_id(config.hydra)
        parent = tracking.sweep_parent(client, experiment, identity, create=True)
        trials = tracking.sweep_runs(client, experiment, identity, "trial")
        summary.log_summary(client, parent.info.run_id, trials, config.hydra)
        finished = [run for run in trials if run.info.status == "FINISHED"]
        keep_best(client, finished, run_config.sweep, Path(config.hydra.sweep.dir) / "best")
        client.set_terminated(parent.info.run_id, "FINISHED")
