"""Look at the data as the seed project does: dimensions, value range, classes, five samples.

Run `python -m mnist_sweep.explore [--dataset fashion_mnist] [--root DIR] [--out show5.png]`
to print the summary and write the picture.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mnist_sweep import report
from mnist_sweep.config import DatasetName
from mnist_sweep.data import CLASS_NAMES, DataFiles, class_names, torchvision_dataset


def describe(
    images: torch.Tensor, labels: torch.Tensor, names: Sequence[str] = CLASS_NAMES
) -> dict[str, Any]:
    """Shape, dtype, value range and per-class counts of a split held as tensors."""
    counts = torch.bincount(labels, minlength=len(names)).tolist()
    return {
        "images": len(images),
        "image_shape": list(images.shape[1:]),
        "dtype": str(images.dtype).removeprefix("torch."),
        "min": images.min().item(),
        "max": images.max().item(),
        "class_counts": dict(zip(names, counts, strict=True)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Summarize a dataset and draw five samples.")
    parser.add_argument("--dataset", type=DatasetName, default=DatasetName.mnist,
                        choices=list(DatasetName))  # fmt: skip
    parser.add_argument("--root", default=None, help="data folder (default: the user cache)")
    parser.add_argument(
        "--source-dir", help="folder of the four .gz files (default: the dataset's usual place)"
    )
    parser.add_argument("--out", type=Path, default=Path("show5.png"), help="PNG to write")
    args = parser.parse_args(argv)
    files = DataFiles(root=args.root, source_dir=args.source_dir, dataset=args.dataset)
    names = class_names(args.dataset)
    splits = {
        name: torchvision_dataset(files, train)
        for name, train in (("train", True), ("test", False))
    }
    for name, dataset in splits.items():
        print(name, describe(dataset.data, dataset.targets, names))
    args.out.write_bytes(report.show5_png(splits["train"].data, splits["train"].targets, names))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
