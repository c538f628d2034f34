"""Entry point: `python run.py [overrides]` for one run, `python run.py -m` for a sweep.

Only Hydra and the config schema are imported here: `--help`, `--cfg` and tab completion stay
fast, and torch, MLflow and Optuna load when a run or a sweep starts.
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mnist_sweep.config import register_schema
from mnist_sweep.sweep import plugin

register_schema()
plugin.register()


@hydra.main(config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from mnist_sweep import experiment
    from mnist_sweep.sweep import job

    return experiment.run(cfg, Path(HydraConfig.get().runtime.output_dir), job.current_job())


if __name__ == "__main__":
    main()
