"""Entry point: `python run.py [overrides]` for one run, `python run.py -m` for a sweep.

Only Hydra and the config schema are imported here: `--help`, `--cfg`, tab completion and
config errors stay fast, and torch, MLflow and Optuna load when a run or a sweep starts.
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mnist_sweep.config import ConfigError, exit_with, register_schema, to_run_config
from mnist_sweep.sweep import plugin

register_schema()
plugin.register()

# Our own console log handler, which Hydra instantiates from conf/config.yaml.
TRUSTED_TARGETS = ["mnist_sweep.console.ConsoleHandler"]


@hydra.main(config_path="conf", config_name="config", execution_whitelist=TRUSTED_TARGETS)
def main(cfg: DictConfig) -> float:
    try:
        to_run_config(cfg)  # a config error ends here, before torch and MLflow load
        from mnist_sweep import experiment
        from mnist_sweep.sweep import job
        from mnist_sweep.training import StoppedEarly

        hydra_cfg = HydraConfig.get()
        sweep_job = job.current(hydra_cfg)
        if sweep_job is not None:
            sweep_job.pin_device()
        try:
            return experiment.run(cfg, Path(hydra_cfg.runtime.output_dir), sweep_job)
        except StoppedEarly as stopped:  # only a sweep's pruner stops a run early
            return job.Pruned(stopped.epoch)
    except ConfigError as error:
        # In a sweep the error fails this trial only (the sweeper logs it); a run ends here.
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        exit_with(error)


if __name__ == "__main__":
    main()
