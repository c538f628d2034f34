from __future__ import annotations

from pathlib import Path

import torch

from mnist_sweep.data import DataFiles, torchvision_dataset
from mnist_sweep.explore import describe, main
from mnist_sweep.report import show5_png

from tests.support import needs_fashion_mnist

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_describe_reports_dimensions_range_and_class_counts(data_root: Path) -> None:
    dataset = torchvision_dataset(DataFiles(str(data_root)), train=False)
    summary = describe(dataset.data, dataset.targets)
    assert summary["images"] == 10_000 and summary["image_shape"] == [28, 28]
    assert summary["dtype"] == "uint8" and (summary["min"], summary["max"]) == (0, 255)
    assert sum(summary["class_counts"].values()) == 10_000
    assert summary["class_counts"]["1"] == 1135  # the published test-set count of ones


def test_show5_is_a_png_with_content() -> None:
    png = show5_png(torch.rand(5, 784), torch.arange(5))
    assert png.startswith(PNG_SIGNATURE) and len(png) > 5_000


def test_entry_point_prints_and_writes(data_root: Path, tmp_path: Path, capsys) -> None:
    main(["--root", str(data_root), "--out", str(tmp_path / "five.png")])
    printed = capsys.readouterr().out
    assert "'images': 60000" in printed and "'images': 10000" in printed
    assert (tmp_path / "five.png").read_bytes().startswith(PNG_SIGNATURE)


@needs_fashion_mnist
def test_explore_fashion_mnist_names_its_classes(tmp_path: Path, capsys) -> None:
    main(["--dataset", "fashion_mnist", "--root", str(tmp_path), "--out", str(tmp_path / "5.png")])
    printed = capsys.readouterr().out
    assert "'T-shirt/top': 6000" in printed and "'Ankle boot': 1000" in printed
    assert (tmp_path / "5.png").read_bytes().startswith(b"\x89PNG")
