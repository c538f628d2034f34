"""The sweep's kept model: the best eligible trial, copied out, registered, and promoted to
the champion only when it beats the current one on the same data.

Every kept version is registered and tagged with what its choice rests on (the metric and
its value, the seeds, the dataset's digest and the validation split), and carries an alias of
its own sweep (`best_<study>`) so that each study's best stays findable. It takes the champion
alias (`sweep.alias`) by the rule `sweep.promote`: `if_better` (the default) only from a
champion measured on the same dataset and validation split with a lower value, or when there
is none; `always`; `never`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path

import mlflow
import torch
from mlflow.entities import LoggedModel, LoggedModelStatus
from mlflow.entities.model_registry import ModelVersion

from mnist_sweep import report, tracking
from mnist_sweep.checkpoints import classifier_from, read_checkpoint
from mnist_sweep.config import DatasetName, Promote, SweepConfig
from mnist_sweep.data import DataFiles
from mnist_sweep.evaluation import predict, test_batches
from mnist_sweep.objective import METRIC
from mnist_sweep.serving import CHECKPOINT_IN_MODEL
from mnist_sweep.sweep import records
from mnist_sweep.tracking import once_more_if_raced

log = logging.getLogger(__name__)
# The version tags that say what a champion was chosen on; comparable versions agree on these.
BASIS = ("dataset_digest", "val_split")
TAG = "mnist_sweep.{}".format
EARLIER_CHECKPOINT_IN_MODEL = "artifacts/model.pt"
LOGGING_WAIT_S = 120.0  # for another worker logging the kept model (about 1 s, more on a server)


def best_trial(
    trials: list[mlflow.entities.Run], min_test_accuracy: float
) -> mlflow.entities.Run | None:
    """The highest validation accuracy among trials whose test accuracy clears the bar."""
    eligible = [
        run for run in trials if run.data.metrics.get("test_accuracy", 0.0) >= min_test_accuracy
    ]
    return max(eligible, key=lambda run: run.data.metrics[METRIC], default=None)


def keep_best(
    client: mlflow.MlflowClient,
    trials: list[mlflow.entities.Run],
    config: SweepConfig,
    folder: Path,
    sweep_id: str | None = None,
    confirmed: dict[str, str] | None = None,
) -> mlflow.entities.Run | None:
    """Copy the best trial's model, config and metrics to `folder`, register it (with
    `sweep_id`'s own alias) and promote it; `confirmed` replaces the single run's selection
    tags with its configuration's confirmation over seeds (summary.log_confirmations)."""
    best = best_trial(trials, config.min_test_accuracy)
    if best is None:
        log.warning(
            "No trial reached test_accuracy >= %.4f among %d complete trials; kept nothing",
            config.min_test_accuracy, len(trials),
        )  # fmt: skip
        return None
    logged = kept_model(client, best, folder / "evaluation")
    copy_out(client, best, logged, folder)
    version = register(client, best, logged.model_id, config.registered_model)
    aliases = [sweep_alias(sweep_id)] if sweep_id else []
    for alias in aliases:  # workers of one sweep ending together set it at once
        once_more_if_raced(client.set_registered_model_alias, version.name, alias, version.version)
    for key, value in {**basis(best), **(confirmed or {})}.items():
        client.set_model_version_tag(version.name, version.version, TAG(key), value)
    if promote(client, version, config.alias, config.promote):
        aliases.append(config.alias)
    log.info(
        "Kept trial %s (%s %.4f, test_accuracy %.4f) in %s; registered as %s v%s%s",
        best.data.tags.get(records.TRIAL), METRIC, best.data.metrics[METRIC],
        best.data.metrics["test_accuracy"], folder, version.name, version.version,
        "".join(f" @{alias}" for alias in aliases),
    )  # fmt: skip
    return best


def copy_out(
    client: mlflow.MlflowClient, best: mlflow.entities.Run, logged: LoggedModel, folder: Path
) -> None:
    """The kept trial's model.pt, config.yaml and metrics.json in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download:
        shutil.copy(client.download_artifacts(best.info.run_id, "config.yaml", download), folder)
        shutil.copy(download_checkpoint(client, logged, download), folder / "model.pt")
    summary = {"run_id": best.info.run_id, "trial": best.data.tags.get(records.TRIAL),
               **best.data.metrics}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(summary, indent=2))


def download_checkpoint(client: mlflow.MlflowClient, logged: LoggedModel, folder: str) -> str:
    """The logged model's model.pt: where log_pyfunc puts it, or where models logged by
    earlier versions of this package (as code, with model.pt an artifact) have it."""
    for inside in (CHECKPOINT_IN_MODEL, EARLIER_CHECKPOINT_IN_MODEL):
        try:
            return mlflow.artifacts.download_artifacts(
                f"{logged.artifact_location}/{inside}", dst_path=folder,
                tracking_uri=client.tracking_uri,
            )  # fmt: skip
        except (mlflow.exceptions.MlflowException, OSError):
            continue
    raise LookupError(f"MLflow Model {logged.model_id} holds no model.pt")


def basis(run: mlflow.entities.Run) -> dict[str, str]:
    """What a kept run's choice rests on, as version tags."""
    params = run.data.params
    digests = [item.dataset.digest for item in run.inputs.dataset_inputs]
    return {
        "selection_metric": METRIC,
        "selection_value": repr(run.data.metrics[METRIC]),
        "seeds": params.get("trainer.seed", ""),
        "test_accuracy": repr(run.data.metrics["test_accuracy"]),
        "dataset_digest": digests[0] if digests else "",
        "val_split": f"{params.get('data.val_size')} images, split_seed "
        f"{params.get('data.split_seed')}",
    }


def sweep_alias(sweep_id: str) -> str:
    """The registry alias of a sweep's own best (aliases allow letters, digits, _ and -)."""
    return "best_" + re.sub(r"[^\w-]", "_", sweep_id.strip("/"))


def promote(client: mlflow.MlflowClient, version: ModelVersion, alias: str, rule: Promote) -> bool:
    """Point `alias` at `version` if `rule` allows; says why in one line when it does not."""
    try:
        holder = client.get_model_version_by_alias(version.name, alias)
    except mlflow.exceptions.MlflowException:
        holder = None
    if holder is not None and str(holder.version) == str(version.version):
        return True
    reason = refusal(holder, client.get_model_version(version.name, version.version), rule)
    if reason:
        log.info("@%s stays on %s v%s: %s (sweep.promote=%s)", alias, version.name,
                 holder.version if holder else "-", reason, rule.value)  # fmt: skip
        return False
    # Of two workers promoting at once, both found no champion: one adds the alias, the other
    # may fail on the duplicate key, and sets it once more (a race tests/test_scale_out.py forces).
    once_more_if_raced(client.set_registered_model_alias, version.name, alias, version.version)
    return True


def refusal(holder: ModelVersion | None, candidate: ModelVersion, rule: Promote) -> str:
    """Why `candidate` may not take the alias from `holder`, or "" when it may."""
    if rule is Promote.never:
        return "promotion is off"
    if rule is Promote.always or holder is None:
        return ""
    ours, theirs = candidate.tags, holder.tags
    for key in BASIS:
        if ours.get(TAG(key)) != theirs.get(TAG(key)):
            return (f"v{candidate.version} is not comparable, its {key} "
                    f"{ours.get(TAG(key))!r} differs from the champion's "
                    f"{theirs.get(TAG(key))!r}")  # fmt: skip
    value, best = (float(tags.get(TAG("selection_value"), "nan")) for tags in (ours, theirs))
    if not value > best:
        return f"v{candidate.version}'s {METRIC} {value:.4f} does not beat its {best:.4f}"
    return ""


def kept_model(
    client: mlflow.MlflowClient, run: mlflow.entities.Run, report_folder: Path
) -> LoggedModel:
    """The kept run's MLflow Model: the one it logged (a run outside a sweep, or a trial kept
    before), else logged now from its model.pt, with its evaluation report written to
    `report_folder` and both added to its run. A sweep's trials log neither (experiment.run):
    only the kept one needs them.

    Workers of one sweep ending together keep the same run: one that finds the model still
    being logged by another waits for it (up to LOGGING_WAIT_S) rather than log its own."""
    waited = 0.0
    while models := client.search_logged_models(
        [run.info.experiment_id], f"source_run_id = '{run.info.run_id}'"
    ):
        ready = [model for model in models if model.status == LoggedModelStatus.READY]
        if ready or waited >= LOGGING_WAIT_S:
            return min(ready or models, key=lambda model: model.creation_timestamp)
        time.sleep(0.5)
        waited += 0.5
    with tempfile.TemporaryDirectory() as download:
        path = Path(client.download_artifacts(run.info.run_id, "model.pt", download))
        checkpoint = read_checkpoint(path)
        data = checkpoint["config"]["data"]
        files = DataFiles(data["root"], data.get("source_dir"), data.get("download", False),
                          DatasetName(data.get("name", "mnist")))  # fmt: skip
        with mlflow.start_run(run_id=run.info.run_id):
            model_id = tracking.log_model(path)
            predictions = predict(classifier_from(checkpoint), test_batches(files),
                                  torch.device("cpu"))  # fmt: skip
            report.report_and_log(predictions, report_folder, checkpoint.get("history", []),
                                  checkpoint["class_names"])  # fmt: skip
    return client.get_logged_model(model_id)


def register(
    client: mlflow.MlflowClient, run: mlflow.entities.Run, model_id: str, name: str
) -> ModelVersion:
    """Register the run's logged model in the Model Registry (once per run).

    Workers of one sweep that end together may register the same run at once: each accepts
    the registered model another created, and of the versions they made of the run, all keep
    the first (numbers only grow, so whoever made a later one sees the earlier).
    """
    if not client.search_registered_models(f"name = '{name}'"):
        try:
            client.create_registered_model(name)
        except mlflow.exceptions.MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    query = f"name = '{name}' AND run_id = '{run.info.run_id}'"
    versions = client.search_model_versions(query)
    if not versions:
        ours = client.create_model_version(
            name, f"models:/{model_id}", run.info.run_id, model_id=model_id
        )
        versions = client.search_model_versions(query)
        if first(versions).version != ours.version:
            client.delete_model_version(name, ours.version)
    return first(versions)


def first(versions: list[ModelVersion]) -> ModelVersion:
    return min(versions, key=lambda version: int(version.version))
