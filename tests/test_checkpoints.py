from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mnist_sweep
from mnist_sweep.checkpoints import CheckpointError, read_checkpoint, save_checkpoint
from mnist_sweep.models import MLP, Classifier


def saved(tmp_path: Path) -> tuple[Path, MLP]:
    torch.manual_seed(0)
    net = MLP([32, 16], dropout=0.3)
    path = save_checkpoint(
        tmp_path / "model.pt", net, normalization={"mean": 0.1307, "std": 0.3081},
        class_names=[str(d) for d in range(10)], metrics={"test_accuracy": 0.5},
        config={"optimizer": {"lr": 0.001}}, run_id="abc",
    )  # fmt: skip
    return path, net


def test_save_then_load_gives_identical_predictions(tmp_path: Path) -> None:
    path, net = saved(tmp_path)
    images = torch.rand(6, 1, 28, 28)
    expected = Classifier(net.eval(), 0.1307, 0.3081)(images)
    loaded = mnist_sweep.load_model(path)
    assert not loaded.training
    assert torch.equal(loaded(images), expected)


def test_checkpoint_carries_config_metrics_and_versions(tmp_path: Path) -> None:
    checkpoint = read_checkpoint(saved(tmp_path)[0])
    assert checkpoint["config"] == {"optimizer": {"lr": 0.001}}
    assert checkpoint["metrics"] == {"test_accuracy": 0.5}
    assert checkpoint["class_names"][3] == "3"
    assert set(checkpoint["versions"]) == {"torch", "torchvision", "mnist_sweep"}
    assert checkpoint["run_id"] == "abc" and checkpoint["model_config"]["hidden_sizes"] == [32, 16]


def test_missing_truncated_and_foreign_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        mnist_sweep.load_model(tmp_path / "absent.pt")
    path, _ = saved(tmp_path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"truncated\.pt"):
        mnist_sweep.load_model(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a mnist_sweep checkpoint"):
        mnist_sweep.load_model(foreign)
