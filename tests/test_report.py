"""Evaluation artifacts are real files with content, and `python -m mnist_sweep.evaluate` works."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import mlflow
import pytest
import torch

from mnist_sweep import experiment
from mnist_sweep.checkpoints import read_checkpoint
from mnist_sweep.evaluate import main as evaluate_main
from mnist_sweep.evaluation import Predictions
from mnist_sweep.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"
CLASSES = [str(d) for d in range(10)]
FIGURES = {"confusion_matrix.png", "reliability.png", "confident_mistakes.png",
           "training_curves.png"}  # fmt: skip


def test_report_files_are_valid_pngs_csv_and_json(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(500) % 10
    logits = torch.randn(500, 10, generator=generator)
    logits[torch.arange(500), labels] += 2
    predictions = Predictions(logits.softmax(1), labels, torch.rand(500, 784, generator=generator))
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_accuracy": 0.8,
                "val_accuracy": 0.75} for e in (1, 2, 3)]  # fmt: skip
    files, metrics = write_report(tmp_path, predictions, CLASSES, history)
    names = {path.name for path in files}
    assert names == FIGURES | {"per_class.csv", "evaluation.json"}
    for name in FIGURES:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    rows = list(csv.DictReader((tmp_path / "per_class.csv").open()))
    assert [row["class"] for row in rows] == CLASSES
    assert sum(int(row["support"]) for row in rows) == 500
    assert json.loads((tmp_path / "evaluation.json").read_text())["test_ece"] == metrics["test_ece"]
    assert metrics["test_accuracy_ci95_low"] < metrics["test_accuracy_ci95_high"]
    assert {f"test_recall_{c}" for c in CLASSES} <= set(metrics)


@pytest.fixture
def trained(small_cfg, tmp_path: Path) -> Path:
    experiment.run(small_cfg, tmp_path / "run")
    return tmp_path / "run" / "model.pt"


@pytest.mark.slow
def test_every_run_logs_the_evaluation(trained: Path, small_cfg) -> None:
    client = mlflow.MlflowClient(small_cfg.mlflow.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("mnist_sweep").experiment_id])
    artifacts = client.list_artifacts(run.info.run_id, "evaluation")
    logged = {artifact.path.removeprefix("evaluation/") for artifact in artifacts}
    assert logged >= FIGURES
    assert {"test_ece", "test_accuracy_ci95_low", "evaluation_time_s"} <= set(run.data.metrics)


@pytest.mark.slow
def test_evaluate_entry_point_logs_an_evaluation_run_naming_its_source(
    trained: Path, small_cfg, data_root: Path, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="mnist_sweep.evaluate")  # main logs to stderr
    assert (
        evaluate_main([str(trained), "--root", str(data_root), "--out", str(tmp_path / "ev")]) == 0
    )
    recorded = read_checkpoint(trained)["metrics"]["test_accuracy"]
    assert f"model: {trained}, test accuracy {recorded:.4f}" in caplog.messages
    assert (tmp_path / "ev" / "confusion_matrix.png").read_bytes().startswith(PNG)
    client = mlflow.MlflowClient(small_cfg.mlflow.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("mnist_sweep").experiment_id])
    [evaluation] = [r for r in runs if r.data.tags.get("mnist_sweep.role") == "evaluation"]
    [training] = [r for r in runs if r is not evaluation and "mnist_sweep.role" not in r.data.tags]
    assert evaluation.data.tags["mnist_sweep.source_run"] == training.info.run_id
    assert evaluation.info.run_name == f"evaluate {tmp_path.name}/run"
    # Same model, same test images: the same accuracy as the training run measured.
    accuracy = json.loads((tmp_path / "ev" / "evaluation.json").read_text())["accuracy"]
    assert accuracy == pytest.approx(training.data.metrics["test_accuracy"], abs=1e-9)
    assert evaluation.data.metrics["test_ece"] == pytest.approx(
        training.data.metrics["test_ece"], abs=1e-4
    )


@pytest.mark.slow
def test_evaluate_refuses_a_broken_checkpoint(trained: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(trained.read_bytes()[:2000])
    assert evaluate_main([str(broken)]) == 2
    assert "broken.pt" in capsys.readouterr().err
    assert evaluate_main([str(tmp_path / "missing.pt")]) == 2


@pytest.mark.slow
def test_evaluate_several_checkpoints_as_an_ensemble_with_tta(
    small_cfg, data_root: Path, tmp_path: Path, capsys
) -> None:
    paths = []
    for seed in (0, 1):
        small_cfg.trainer.seed = seed
        experiment.run(small_cfg, tmp_path / f"seed{seed}")
        paths.append(str(tmp_path / f"seed{seed}" / "model.pt"))
    assert evaluate_main([*paths, "--tta", "--root", str(data_root)]) == 0
    out = tmp_path / "seed0" / "evaluation-ensemble-tta"
    assert (out / "confusion_matrix.png").read_bytes().startswith(PNG)
    assert "2 model(s) with TTA: test accuracy" in capsys.readouterr().out
    client = mlflow.MlflowClient(small_cfg.mlflow.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("mnist_sweep").experiment_id])
    [evaluation] = [r for r in runs if r.data.tags.get("mnist_sweep.role") == "evaluation"]
    sources = {r.info.run_id for r in runs if r is not evaluation}
    assert set(evaluation.data.tags["mnist_sweep.source_run"].split(",")) == sources
    assert evaluation.data.params["members"] == "2" and evaluation.data.params["tta"] == "True"
    folder = tmp_path.name
    assert evaluation.info.run_name == f"evaluate ensemble {folder}/seed0, {folder}/seed1 +TTA"
    accuracy = json.loads((out / "evaluation.json").read_text())["accuracy"]
    assert evaluation.data.metrics["test_accuracy"] == pytest.approx(accuracy)


@pytest.mark.slow
def test_models_of_different_datasets_are_not_ensembled(
    trained: Path, tmp_path: Path, capsys
) -> None:
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["config"]["data"]["name"] = "fashion_mnist"
    checkpoint["class_names"] = ["other"] * 10
    other = tmp_path / "other.pt"
    torch.save(checkpoint, other)
    assert evaluate_main([str(trained), str(other)]) == 2
    assert "different datasets" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_asks_for_the_store_when_the_checkpoint_records_it_masked(
    trained: Path, tmp_path: Path, capsys
) -> None:
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["config"]["mlflow"]["tracking_uri"] = "http://alice:***@127.0.0.1:9"
    masked = tmp_path / "masked.pt"
    torch.save(checkpoint, masked)
    assert evaluate_main([str(masked)]) == 2
    assert "password masked: pass --tracking-uri" in capsys.readouterr().err
