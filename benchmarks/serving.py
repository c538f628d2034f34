"""Latency and throughput of the served model: `mlflow models serve --env-manager local`.

    python -m benchmarks.serving [--model-uri models:/mnist_sweep_mlp@champion]

Times mlflow.pyfunc.load_model of the model (store: MLFLOW_TRACKING_URI, ./mlflow.db by
default), serves it on a free local port and sends MNIST test digits as JSON
{"inputs": N x 1 x 28 x 28}: 200 one-image requests (latency p50 and p95) and 20 requests of
100 images (images per second). The baseline in the same run is the same model's pyfunc
predict in this process on the same inputs.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch

from mnist_sweep.data import DataFiles, torchvision_dataset

from tests.support import invoke, served

SINGLE, BATCHES, BATCH = 200, 20, 100


def timings(call, inputs: list[np.ndarray]) -> list[float]:
    """Seconds of `call(input)` for each input, after one untimed warm-up call."""
    call(inputs[0])
    times = []
    for images in inputs:
        started = time.perf_counter()
        call(images)
        times.append(time.perf_counter() - started)
    return times


def report(name: str, single: list[float], batches: list[float]) -> None:
    p50, p95 = (np.percentile(single, q) * 1000 for q in (50, 95))
    rate = BATCH * len(batches) / sum(batches)
    print(f"{name}: one image p50 {p50:.1f} ms, p95 {p95:.1f} ms; "
          f"batches of {BATCH}: {rate:.0f} images/s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-uri", default="models:/mnist_sweep_mlp@champion")
    parser.add_argument("--root", help="MNIST data folder (default: the usual cache)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, Python {platform.python_version()}, "
          f"torch {torch.__version__}, mlflow {mlflow.__version__}")  # fmt: skip
    test = torchvision_dataset(DataFiles(args.root), train=False)
    images = (test.data[: SINGLE + BATCH * BATCHES].unsqueeze(1).float() / 255).numpy()
    single = [images[i : i + 1] for i in range(SINGLE)]
    batches = [images[SINGLE + i * BATCH : SINGLE + (i + 1) * BATCH] for i in range(BATCHES)]
    started = time.perf_counter()
    pyfunc = mlflow.pyfunc.load_model(args.model_uri)
    print(f"mlflow.pyfunc.load_model: {time.perf_counter() - started:.2f} s")
    report("pyfunc in process (baseline)", timings(pyfunc.predict, single),
           timings(pyfunc.predict, batches))  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "serve.log"
        with served(args.model_uri, mlflow.get_tracking_uri(), log) as url:

            def post(batch: np.ndarray) -> None:
                status, answer = invoke(url, {"inputs": batch.tolist()})
                assert status == 200 and len(answer["predictions"]) == len(batch), answer

            report("mlflow models serve, HTTP", timings(post, single), timings(post, batches))


if __name__ == "__main__":
    main()
