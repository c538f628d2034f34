"""Entry point: `python run.py [overrides]` for one run, `python run.py -m` for a sweep."""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mnist_sweep import experiment
from mnist_sweep.config import register_schema
from mnist_sweep.sweep import job, sweeper

register_schema()
sweeper.register()


@hydra.main(config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return experiment.run(cfg, Path(HydraConfig.get().runtime.output_dir), job.current_job())


if __name__ == "__main__":
    main()
