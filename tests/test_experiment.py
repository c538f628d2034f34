"""One tracked run end to end, in a temporary MLflow store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import mlflow
import pytest
import torch
from omegaconf import OmegaConf

import mnist_sweep
from mnist_sweep import experiment
from mnist_sweep.checkpoints import read_checkpoint
from mnist_sweep.config import DatasetName
from mnist_sweep.data import DATASETS
from mnist_sweep.models import CNN

from tests.support import PlainJob, compose_config, needs_fashion_mnist, small_overrides

EPOCH_METRICS = {"train_loss", "train_accuracy", "val_loss", "val_accuracy"}
IMAGE_SHAPE = (1, 28, 28)  # one channel, 28x28: MNIST and Fashion-MNIST
FINAL_METRICS = {"test_loss", "test_accuracy", "wall_time_s", "train_samples_per_s"}


@pytest.fixture
def finished(small_cfg, tmp_path: Path):
    small_cfg.trainer.epochs = 2
    val_accuracy = experiment.run(small_cfg, tmp_path / "out")
    client = mlflow.MlflowClient(small_cfg.mlflow.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(small_cfg.mlflow.experiment_name).experiment_id]
    )
    return val_accuracy, client, runs, tmp_path / "out"


def test_a_single_run_is_named_for_what_it_trains(finished) -> None:
    _, _, [run], _ = finished
    assert run.info.run_name == "mlp adam lr=0.001 bs=100"


def test_one_run_holds_the_whole_config_as_dotted_params(finished) -> None:
    _, _, runs, _ = finished
    assert len(runs) == 1
    params = runs[0].data.params
    assert params["optimizer.lr"] == "0.001"
    assert params["model.hidden_sizes"] == "[64, 32]"
    assert params["data.loader"] == "tensor"
    assert set(params) >= {
        "trainer.seed",
        "trainer.device",
        "data.batch_size",
        "mlflow.tracking_uri",
    }


def test_a_password_in_a_url_of_the_config_is_recorded_masked(small_cfg, tmp_path: Path) -> None:
    # Passwords come in the tracking or storage URL, but a SQLite store can carry none (and
    # the run must reach its store): another key holds the URL, masked by the same code.
    small_cfg.mlflow.run_name = "https://alice:s3cret@example.org/runs"
    experiment.run(small_cfg, tmp_path / "out")
    client = mlflow.MlflowClient(small_cfg.mlflow.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("mnist_sweep").experiment_id])
    assert run.data.params["mlflow.run_name"] == "https://alice:***@example.org/runs"
    config_yaml = OmegaConf.load(tmp_path / "out" / "config.yaml")
    in_model = read_checkpoint(tmp_path / "out" / "model.pt")["config"]
    for recorded in (config_yaml.mlflow.run_name, in_model["mlflow"]["run_name"]):
        assert recorded == "https://alice:***@example.org/runs"
    assert b"s3cret" not in (tmp_path / "out" / "config.yaml").read_bytes()


def test_metrics_per_epoch_and_at_the_end(finished) -> None:
    val_accuracy, client, runs, _ = finished
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert set(run.data.metrics) >= EPOCH_METRICS | FINAL_METRICS
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [point.step for point in history] == [1, 2]
    assert history[-1].value == val_accuracy
    assert 0.5 < run.data.metrics["test_accuracy"] <= 1


def test_artifacts_are_the_config_and_show5_and_the_model_an_mlflow_model(finished) -> None:
    _, client, runs, out = finished
    run = runs[0]
    names = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert names == {"config.yaml", "show5.png", "evaluation"}
    assert (out / "show5.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    [logged] = client.search_logged_models([run.info.experiment_id])
    assert logged.source_run_id == run.info.run_id
    assert {metric.key for metric in logged.metrics} >= FINAL_METRICS
    images = torch.rand(2, *IMAGE_SHAPE)
    pyfunc = mlflow.pyfunc.load_model(logged.model_uri)
    expected = mnist_sweep.load_model(out / "model.pt")(images)
    torch.testing.assert_close(torch.from_numpy(pyfunc.predict(images.numpy())), expected)


def test_the_run_names_its_dataset_by_the_digest_of_its_raw_files(finished) -> None:
    _, _, runs, _ = finished
    [dataset_input] = runs[0].inputs.dataset_inputs
    assert dataset_input.dataset.name == "mnist"
    sums = DATASETS[DatasetName.mnist].checksums.read_bytes()  # what `sha256sum -c` reads
    assert dataset_input.dataset.digest == hashlib.sha256(sums).hexdigest()[:16]
    assert {tag.value for tag in dataset_input.tags} == {"training"}


def test_a_failing_run_is_marked_failed_and_keeps_what_it_logged(small_cfg, tmp_path) -> None:
    small_cfg.optimizer.lr = 1e30
    small_cfg.trainer.epochs = 3
    with pytest.raises(RuntimeError, match="loss became"):
        experiment.run(small_cfg, tmp_path / "out")
    client = mlflow.MlflowClient(small_cfg.mlflow.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("mnist_sweep").experiment_id])[0]
    assert run.info.status == "FAILED"
    assert run.data.params["optimizer.lr"] == "1e+30"


@pytest.mark.slow
def test_a_cnn_run_with_augmentation_and_ema_saves_a_loadable_cnn(small_cfg, tmp_path) -> None:
    overrides = {"model": {"arch": "cnn", "channels": [4, 8], "hidden_sizes": [16]},
                 "data": {"augment": {"rotation": 10.0, "translate": 0.1}},
                 "trainer": {"ema_decay": 0.9, "lr_schedule": "cosine",
                             "label_smoothing": 0.1, "epochs": 3},
                 "optimizer": {"lr": 0.003}}  # fmt: skip
    cfg = OmegaConf.merge(small_cfg, overrides)
    assert experiment.run(cfg, tmp_path / "out") > 0.5  # chance is 0.1
    model = mnist_sweep.load_model(tmp_path / "out" / "model.pt")
    assert isinstance(model.net, CNN) and model.net.hparams["channels"] == [4, 8]
    torch.testing.assert_close(model(torch.rand(2, *IMAGE_SHAPE)).sum(1), torch.ones(2))


@pytest.mark.slow
@needs_fashion_mnist
def test_a_fashion_mnist_run_reports_its_own_classes(data_root, tmp_path) -> None:
    cfg = compose_config(["data=fashion_mnist", *small_overrides(data_root, tmp_path)])
    experiment.run(cfg, tmp_path / "out")
    rows = (tmp_path / "out" / "evaluation" / "per_class.csv").read_text().splitlines()
    assert rows[1].startswith("T-shirt/top,") and rows[-1].startswith("Ankle boot,")
    checkpoint = read_checkpoint(tmp_path / "out" / "model.pt")
    assert checkpoint["class_names"][0] == "T-shirt/top"


class SweepJob(PlainJob):
    """A job of a sweep, as experiment.run sees it (mnist_sweep/sweep/job.py)."""


def test_a_trial_logs_a_loadable_checkpoint_and_the_kept_one_gets_its_model_and_report(
    small_cfg, tmp_path: Path
) -> None:
    from mnist_sweep.sweep.keep import kept_model
    from mnist_sweep.tracking import TORCH_THREADS, use_store

    experiment.run(small_cfg, tmp_path / "out", SweepJob())
    client = mlflow.MlflowClient(small_cfg.mlflow.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("mnist_sweep").experiment_id])
    assert set(run.data.metrics) >= EPOCH_METRICS | FINAL_METRICS
    assert run.data.tags[TORCH_THREADS] == str(torch.get_num_threads())
    names = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert names == {"model.pt", "config.yaml"}  # no MLflow Model, no evaluation report
    assert not client.search_logged_models([run.info.experiment_id])
    downloaded = client.download_artifacts(run.info.run_id, "model.pt", str(tmp_path))
    images = torch.rand(2, *IMAGE_SHAPE)
    expected = mnist_sweep.load_model(tmp_path / "out" / "model.pt")(images)
    torch.testing.assert_close(mnist_sweep.load_model(downloaded)(images), expected)

    previous = mlflow.get_tracking_uri()
    use_store(small_cfg.mlflow.tracking_uri)  # as the sweep does when it connects
    try:
        logged = kept_model(client, run, tmp_path / "best" / "evaluation")
        assert kept_model(client, run, tmp_path / "again").model_id == logged.model_id  # once
    finally:
        use_store(previous)
    assert logged.source_run_id == run.info.run_id
    pyfunc = mlflow.pyfunc.load_model(logged.model_uri)
    torch.testing.assert_close(torch.from_numpy(pyfunc.predict(images.numpy())), expected)
    kept = client.get_run(run.info.run_id)
    assert "evaluation" in {artifact.path for artifact in client.list_artifacts(kept.info.run_id)}
    assert kept.data.metrics["test_macro_f1"] > 0 and kept.info.status == "FINISHED"
    assert (tmp_path / "best" / "evaluation" / "per_class.csv").exists()
    assert not (tmp_path / "again").exists()
