"""The run's model as an MLflow Model: a pyfunc over model.pt, logged without pickle."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from mnist_sweep.checkpoints import load_model
from mnist_sweep.models import IMAGE_SIDE, NUM_CLASSES

# MLflow runs this file to build the pyfunc ("models from code"), so loading the model
# unpickles nothing: the weights come from model.pt through load_model (weights_only).
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
CHECKPOINT = "checkpoint"
CHECKPOINT_IN_MODEL = "artifacts/model.pt"  # where MLflow puts artifacts={CHECKPOINT: model.pt}
SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, IMAGE_SIDE, IMAGE_SIDE))]),
    outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, NUM_CLASSES))]),
)


class DigitClassifier(mlflow.pyfunc.PythonModel):
    """float32 images in [0, 1] of shape (N, 1, 28, 28) -> (N, 10) class probabilities."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.classifier = load_model(context.artifacts[CHECKPOINT])

    def predict(self, context: Any, model_input: np.ndarray, params: Any = None) -> np.ndarray:
        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            return self.classifier(images).numpy()


def requirements() -> list[str]:
    """What the loading environment needs: this package (not on PyPI: install it, then serve
    with --env-manager local), the torch it was trained with, and MLflow."""
    return [f"{name}=={version(name)}" for name in ("mnist_sweep", "torch", "mlflow")]


def log_pyfunc(checkpoint: Path, name: str = "model") -> mlflow.models.model.ModelInfo:
    """Log `checkpoint` as the active run's MLflow Model, with signature and input example."""
    example = np.zeros((1, 1, IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(MODEL_CODE),
        artifacts={CHECKPOINT: str(checkpoint)},
        signature=SIGNATURE,
        input_example=example,
        pip_requirements=requirements(),
    )


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def served(model_uri: str, tracking_uri: str, log: Path) -> Iterator[str]:
    """`mlflow models serve --env-manager local` on a free 127.0.0.1 port for the length of a
    with block (tests, benchmarks); yields its URL, logs to `log`."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    # The server runs `uvicorn` by name: the venv's bin/ is on PATH, as when it is activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    environment = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}
    with open(log, "w") as output:
        server = subprocess.Popen(command, env=environment, stdout=output, stderr=output,
                                  start_new_session=True)  # fmt: skip
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Poll `url` until it answers 200; an error with the server's log if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-3000:]}")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError),
            urllib.request.urlopen(url, timeout=5) as reply,
        ):
            if reply.status == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout} s: {log.read_text()[-3000:]}")


def invoke(url: str, body: dict) -> tuple[int, dict]:
    """POST `body` as JSON to the served model's /invocations: the status and the answer."""
    request = urllib.request.Request(f"{url}/invocations", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)
