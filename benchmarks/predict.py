"""Whole-process time of `python -m mnist_sweep.predict` on 1 image and on 1,000 image files.

    python -m benchmarks.predict --model multirun/mlp/best [--repeats 3] [--samples DIR]

Writes 1,000 MNIST test digits as people hand them over (handed_over of benchmarks/photos.py:
PNG, blue ink on cream paper, upscaled 3-7x, off-centre) into a temporary folder, or into
--samples DIR, which is kept. Times, as subprocesses, the CLI on one file and on the folder,
and as the baseline in the same run the interpreter importing mnist_sweep.predict and torch
alone; the median of --repeats each. Also prints the accuracy of the predictions on the 1,000
files and on the same digits as test tensors.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mnist_sweep.data import DataFiles, torchvision_dataset
from mnist_sweep.predict import load_predictor

from benchmarks.photos import handed_over

IMAGES = 1000


def write_samples(folder: Path, root: str | None) -> np.ndarray:
    """The first IMAGES test digits as handed-over PNG files; returns their labels."""
    test = torchvision_dataset(DataFiles(root), train=False)
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for index, digit in enumerate(test.data[:IMAGES].numpy()):
        handed_over(digit, rng).save(folder / f"{index:04d}.png")
    return test.targets[:IMAGES].numpy()


def seconds(command: list[str], repeats: int) -> tuple[float, str]:
    """Median wall time of `command` over `repeats`, and its last output."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times), done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="what predict's --model takes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=Path, help="write the images here and keep them")
    parser.add_argument("--root", help="MNIST data folder (default: the usual cache)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, Python {platform.python_version()}, "
          f"torch {torch.__version__}")  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.samples or Path(scratch) / "samples"
        labels = write_samples(folder, args.root)
        cli = [sys.executable, "-m", "mnist_sweep.predict", "--model", args.model, "--json"]
        imports = [sys.executable, "-c", "import torch, mnist_sweep.predict"]
        baseline, _ = seconds(imports, args.repeats)
        one, _ = seconds([*cli, str(folder / "0000.png")], args.repeats)
        many, output = seconds([*cli, str(folder)], args.repeats)
    digits = [json.loads(line)["digit"] for line in output.splitlines()]
    print(f"importing torch and mnist_sweep.predict: {baseline:.2f} s (baseline)")
    print(f"predict, 1 image: {one:.2f} s ({one / baseline:.2f}x the baseline)")
    print(f"predict, {IMAGES} image files: {many:.2f} s ({many / baseline:.2f}x the baseline); "
          f"{(many - one) / (IMAGES - 1) * 1000:.1f} ms per further image")  # fmt: skip
    print(f"accuracy on the {IMAGES} files: {np.mean(np.array(digits) == labels):.4f}, "
          f"on the same digits as test tensors: {tensor_accuracy(args, labels):.4f}")  # fmt: skip


def tensor_accuracy(args: argparse.Namespace, labels: np.ndarray) -> float:
    """The model's accuracy on the same test digits as raw tensors, not as pictures."""
    test = torchvision_dataset(DataFiles(args.root), train=False)
    images = (test.data[:IMAGES].unsqueeze(1).float() / 255).numpy()
    return float(np.mean(load_predictor(args.model)(images).argmax(1) == labels))


if __name__ == "__main__":
    main()
