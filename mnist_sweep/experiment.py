"""One run from a composed config: train, test, save, and report everything to MLflow."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import mlflow
import torch
from omegaconf import DictConfig, OmegaConf

from mnist_sweep import checkpoints, device, objective, report, resume, tracking
from mnist_sweep.augment import make_augment
from mnist_sweep.config import (
    ConfigError,
    MlflowConfig,
    RunConfig,
    to_run_config,
    what_it_computes,
)
from mnist_sweep.console import EpochBar
from mnist_sweep.data import (
    DATASETS,
    Loaders,
    check_available,
    class_names,
    expected_digests,
    make_loaders,
)
from mnist_sweep.evaluation import predict
from mnist_sweep.masking import masked_tree
from mnist_sweep.models import Network, build_model
from mnist_sweep.training import EpochMetrics, StoppedEarly, fit

log = logging.getLogger(__name__)


class Job(Protocol):
    """What a sweep adds to a run that is one of its jobs (mnist_sweep/sweep/job.py)."""

    def tags(self, config: MlflowConfig) -> dict[str, str]:
        """The run's MLflow tags."""

    def states(self) -> list[Path]:
        """Training states the job may continue from, newest first (a retried trial's)."""

    def resumed(self, history: list[EpochMetrics]) -> None:
        """Called when the run continues a state that trained `history`; may raise
        StoppedEarly, as after_epoch."""

    def after_epoch(self, metrics: EpochMetrics) -> None:
        """Called after each logged epoch; raises StoppedEarly to stop the run there."""


def run(cfg: DictConfig, output_dir: Path, job: Job | None = None) -> float:
    """Train and test the configured model, log it as one MLflow run; returns the objective.

    If `job` stops it early, the MLflow run ends KILLED and StoppedEarly goes on.
    """
    config = to_run_config(cfg)
    check_available(config.data)  # a missing dataset: one line, before MLflow records a run
    # What the run records (params, model.pt, config.yaml), URL passwords masked; it connects
    # with `config`.
    resolved = masked_tree(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    target = device.configure(config.trainer)
    torch.manual_seed(config.trainer.seed)
    tags = job.tags(config.mlflow) if job is not None else {}
    flat, name = tracking.flatten(resolved), tracking.run_name(config)
    start = _resume_from(config, flat)
    if start is None and job is not None:
        start = _resume_job(job, flat)
    run_id = None if start is None else start["run_id"]
    with tracking.tracked_run(config.mlflow, flat, tags, name, run_id) as active:
        tracking.set_tags({tracking.OUTPUT_DIR: str(output_dir.resolve())})
        started = time.perf_counter()
        loaders = make_loaders(config.data, target, config.trainer.seed)
        dataset = _log_dataset(config)
        model = build_model(config.model).to(target)
        augment = make_augment(config.data.augment, target, config.trainer.seed)
        training_started = time.perf_counter()
        done = 0 if start is None else tracking.log_missing_epochs(start["history"])
        snapshot = _snapshots(output_dir, flat, active.info.run_id)
        with EpochBar(config.trainer.epochs, log, leave=job is None, done=done) as bar:

            def on_epoch(metrics: EpochMetrics) -> None:
                values = _epoch_values(metrics)
                tracking.log_metrics(values, step=metrics.epoch)
                bar.show(metrics.epoch, values)
                if job is not None:
                    job.after_epoch(metrics)

            try:
                if start is not None and job is not None:
                    job.resumed([EpochMetrics(**epoch) for epoch in start["history"]])
                history = fit(model, loaders.train, loaders.val, config.optimizer,
                              config.trainer, target, on_epoch, augment,
                              start, snapshot)  # fmt: skip
            except StoppedEarly:
                tracking.end_run("KILLED")
                _remove_states(output_dir, start)  # a pruned trial never resumes
                raise
        train_seconds = time.perf_counter() - training_started
        # One pass over the test set serves the test metrics and the evaluation report.
        predictions = predict(model, loaders.test, target)
        summary = {
            "test_loss": predictions.loss(),
            "test_accuracy": predictions.accuracy(),
            "wall_time_s": time.perf_counter() - started,
        }
        if len(history) > done:  # a resumed run that had trained every epoch trains none
            trained = loaders.train_size * (len(history) - done)
            summary["train_samples_per_s"] = trained / train_seconds
        records = [asdict(epoch) for epoch in history]
        metrics = {**_epoch_values(history[-1]), **summary}
        checkpoint = Checkpoint(resolved, metrics, records, active.info.run_id)
        full = job is None
        model_path, *others = _write_outputs(output_dir, model, config, checkpoint, loaders, full)
        if full:
            tracking.log_metrics(summary, model_id=tracking.log_model(model_path), dataset=dataset)
            tracking.log_artifacts(others)
        else:
            # A sweep's job logs what compares trials and a loadable model.pt; the MLflow Model
            # and the evaluation report are added to the kept trial only (sweep/keep.py): a
            # trial's fixed cost fell from 1.32 s to 0.44 s (benchmarks/trial_cost.py).
            tracking.log_metrics(summary, dataset=dataset)
            tracking.log_artifacts([model_path, *others])
        tracking.set_tags({tracking.TORCH_THREADS: str(torch.get_num_threads())})
        log.info(" ".join(f"{key}={value:.4f}" for key, value in summary.items()))
        if full:
            report.report_and_log(predictions, output_dir / "evaluation", records,
                                  class_names(config.data.name))  # fmt: skip
    if not config.trainer.keep_state:
        _remove_states(output_dir, start)
    return objective.value(history[-1])


def _resume_from(config: RunConfig, flat: dict[str, Any]) -> dict[str, Any] | None:
    """The training state that `trainer.resume` names, written by a run of the same settings;
    None when it names none. A state that cannot be resumed is a config error naming why."""
    where = config.trainer.resume
    if where is None:
        return None
    try:
        path = resume.state_file(where, lambda run: tracking.output_dir_of(config.mlflow, run))
        state = resume.load(path, what_it_computes(flat))
    except resume.StateError as error:
        raise ConfigError(f"trainer.resume={where}: {error}") from error
    log.info("Resuming MLflow run %s after epoch %d from %s", state["run_id"], state["epoch"], path)
    return {**state, "path": path}


def _resume_job(job: Job, flat: dict[str, Any]) -> dict[str, Any] | None:
    """The newest training state a sweep's job may continue (a retried or requeued trial's), or
    None: a missing or damaged one costs a warning and a start from epoch 1, never the trial."""
    states = job.states()
    if not states:
        return None
    path = next((state for state in states if state.exists()), states[0])
    try:
        state = resume.load(path, what_it_computes(flat))
    except resume.StateError as error:
        log.warning("Starting over from epoch 1: %s", error)
        return None
    log.info("Continuing MLflow run %s after epoch %d from %s", state["run_id"], state["epoch"],
             path)  # fmt: skip
    return {**state, "path": path}


def _remove_states(output_dir: Path, start: dict[str, Any] | None) -> None:
    """A finished run's training state, and the one it continued from."""
    (output_dir / resume.STATE_FILE).unlink(missing_ok=True)
    if start is not None:
        Path(start["path"]).unlink(missing_ok=True)


def _snapshots(output_dir: Path, flat: dict[str, Any], run_id: str) -> Any:
    """Writes each epoch's training state to the run's folder (resume.py)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path, config = output_dir / resume.STATE_FILE, what_it_computes(flat)
    return lambda state: resume.save(path, {**state, "config": config, "run_id": run_id})


def _log_dataset(config: RunConfig) -> mlflow.data.Dataset:
    """The run's dataset input: the raw files that make_loaders verified against these digests."""
    source = config.data.source_dir or DATASETS[config.data.name].source
    return tracking.log_dataset(
        config.data.name.value, expected_digests(config.data.name), str(source)
    )


def _epoch_values(metrics: EpochMetrics) -> dict[str, float]:
    return {key: value for key, value in asdict(metrics).items() if key != "epoch"}


@dataclass
class Checkpoint:
    """What a run adds to its model.pt besides the weights."""

    config: dict[str, Any]
    metrics: dict[str, float]
    history: list[dict[str, float]]
    run_id: str


def _write_outputs(
    output_dir: Path,
    model: Network,
    config: RunConfig,
    checkpoint: Checkpoint,
    loaders: Loaders,
    show5: bool = True,
) -> list[Path]:
    """The run's files: model checkpoint, resolved config and (if `show5`) the show5 picture."""
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir / "config.yaml"
    config_path.write_text(OmegaConf.to_yaml(checkpoint.config))
    model_path = checkpoints.save_checkpoint(
        output_dir / "model.pt",
        model,
        normalization={"mean": config.data.mean, "std": config.data.std},
        class_names=class_names(config.data.name),
        **asdict(checkpoint),
    )
    if not show5:
        return [model_path, config_path]
    images, labels = next(iter(loaders.val))
    show5_path = output_dir / "show5.png"
    show5_path.write_bytes(report.show5_png(images, labels, class_names(config.data.name)))
    return [model_path, config_path, show5_path]
