"""Which digit is in each picture: handwriting in image files, through the kept model.

    python -m mnist_sweep.predict [--model M] [--tracking-uri URI] [--json] [--preview OUT.png]
        PATH...

PATH is an image file or a folder of them. Each picture is brought to MNIST's form
(images.to_mnist) before the model sees it. --model takes a checkpoint (model.pt), a folder
holding one, or an MLflow model URI (models:/mnist_sweep_mlp@champion). By default it is the
champion models:/mnist_sweep_mlp@champion if the store holds one, else the newest
multirun/*/best/model.pt under the current folder: what the last sweep run here kept. The store
is found by the rule of every command (mnist_sweep/tracking.py): --tracking-uri, else
MLFLOW_TRACKING_URI, else ./mlflow.db (the store of a sweep run in this folder). The first line
on stderr names the model taken (path or URI, registry version, store, recorded test accuracy).
A logged model is loaded from its model.pt alone, once its MLmodel is one mnist_sweep logged:
no code from the store runs (serving.check_mlmodel).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from mnist_sweep.images import ImageError, read_digit
from mnist_sweep.masking import masked

if TYPE_CHECKING:
    from mnist_sweep.models import Classifier

Predictor = Callable[[np.ndarray], np.ndarray]  # (N, 1, 28, 28) in [0, 1] -> (N, 10)
KEPT = "multirun/*/best/model.pt"
# The champion that a default sweep records (conf/sweep/mlp.yaml); tests/test_predict.py checks
# that they agree.
REGISTERED_MODEL, ALIAS = "mnist_sweep_mlp", "champion"
CHAMPION = f"models:/{REGISTERED_MODEL}@{ALIAS}"
BATCH = 1000
PREVIEW_LIMIT = 100  # pictures drawn on one preview sheet


@dataclass
class Reading:
    """One picture: its path, as read, in MNIST's form, and the model's probabilities."""

    path: Path
    digit_image: np.ndarray
    picture: Image.Image | None = None  # a thumbnail, kept for the preview only
    probabilities: np.ndarray | None = None

    def line(self, as_json: bool) -> str:
        digit = int(self.probabilities.argmax())
        probability = float(self.probabilities[digit])
        if not as_json:
            return f"{self.path}\t{digit}\t{probability:.4f}"
        return json.dumps({"path": str(self.path), "digit": digit, "probability": probability,
                           "probabilities": self.probabilities.tolist()})  # fmt: skip


def load_predictor(model: str | None) -> Predictor:
    """The model that `--model` names, or the default one (see the module's docstring)."""
    return predictor_of(open_model(model)[0])


def open_model(model: str | None, tracking_uri: str | None = None) -> tuple[Classifier, str]:
    """The classifier that `--model` names, or the default one, and a line saying which it is;
    `tracking_uri` is `--tracking-uri`, the store of a models:/ URI or of the champion."""
    if model is None:
        return open_default(store(tracking_uri))
    if ":/" in model and not Path(model).exists():
        return open_logged(model, store(tracking_uri))
    path = Path(model)
    return open_checkpoint(path / "model.pt" if path.is_dir() else path)


def store(explicit: str | None) -> str:
    """The MLflow store by the rule of every command (tracking.store); MLflow loads only once
    a store is needed."""
    from mnist_sweep import tracking

    return tracking.store(explicit)


def open_default(tracking_uri: str) -> tuple[Classifier, str]:
    """The champion of the store if there is one, else the newest kept model here."""
    if has_champion(tracking_uri):
        classifier, line = open_logged(CHAMPION, tracking_uri)
        return classifier, f"{line} (the default)"
    where = masked(tracking_uri)
    classifier, line = open_checkpoint(newest_kept(Path.cwd(), where))
    return classifier, f"{line} (the default: the newest kept, no {CHAMPION} in {where})"


def has_champion(tracking_uri: str) -> bool:
    """Whether the store `tracking_uri` holds CHAMPION; a SQLite store that does not exist is
    never created."""
    import mlflow

    sqlite = tracking_uri.startswith("sqlite:///")
    if sqlite and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return False
    query = f"name = '{REGISTERED_MODEL}'"
    try:
        models = mlflow.MlflowClient(tracking_uri).search_registered_models(query)
    except mlflow.exceptions.MlflowException as error:
        raise ValueError(f"{masked(tracking_uri)}: {error.message}") from error
    return any(ALIAS in model.aliases for model in models)


def open_logged(uri: str, tracking_uri: str) -> tuple[Classifier, str]:
    """A logged MLflow Model by URI in the store `tracking_uri`: its MLmodel checked, its
    model.pt loaded (weights_only); no code of the model's own runs
    (serving.download_checkpoint)."""
    import mlflow

    import mnist_sweep.tracking  # noqa: F401  its MLflow defaults: no download progress bars
    from mnist_sweep.checkpoints import classifier_from, describe, read_checkpoint
    from mnist_sweep.serving import download_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        try:
            path, version = download_checkpoint(uri, Path(folder), tracking_uri)
            checkpoint = read_checkpoint(path)
        except (mlflow.exceptions.MlflowException, ValueError) as error:
            raise ValueError(f"{uri}: {error}") from error
    numbered = f"{uri} (version {version})" if version else uri
    where = f"{numbered} in {masked(tracking_uri)}"
    return classifier_from(checkpoint), describe(checkpoint, where)


def open_checkpoint(path: Path) -> tuple[Classifier, str]:
    """A checkpoint file's classifier, and a line saying which it is."""
    from mnist_sweep.checkpoints import classifier_from, describe, read_checkpoint

    checkpoint = read_checkpoint(path)
    return classifier_from(checkpoint), describe(checkpoint, str(path))


def newest_kept(folder: Path, looked_in: str) -> Path:
    """The most recently written multirun/*/best/model.pt under `folder`; if there is none, the
    error names the store `looked_in` for a champion too."""
    kept = sorted(folder.glob(KEPT), key=lambda path: path.stat().st_mtime)
    if not kept:
        raise FileNotFoundError(
            f"no kept model: no {CHAMPION} in {looked_in} and nothing matches "
            f"{folder / KEPT}; run a sweep here (python run.py -m) or pass --model"
        )
    return kept[-1]


def predictor_of(classifier: Classifier) -> Predictor:
    import torch

    def predictor(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return classifier(torch.from_numpy(images)).numpy()

    return predictor


def image_files(path: Path) -> list[Path]:
    """`path`, or the image files in the folder `path` (by extension, sorted)."""
    if not path.is_dir():
        return [path]
    extensions = Image.registered_extensions()
    return sorted(file for file in path.iterdir() if file.suffix.lower() in extensions)


def read_all(paths: list[Path], preview: bool = False) -> tuple[list[Reading], list[str]]:
    """The readable pictures, and an error line for each file that is not one."""
    readings, errors = [], []
    for path in paths:
        try:
            files = image_files(path)
        except OSError as error:  # a folder that cannot be listed: permissions, I/O errors
            errors.append(f"error: {path}: cannot list this folder ({error.strerror})")
            continue
        if not files:
            errors.append(f"error: {path}: no image files in this folder")
        for file in files:
            try:
                digit_image, picture = read_digit(file)
            except ImageError as error:
                errors.append(f"error: {error}")
                continue
            readings.append(Reading(file, digit_image))
            if preview and len(readings) <= PREVIEW_LIMIT:
                picture.thumbnail((160, 160))
                readings[-1].picture = picture
    return readings, errors


def classify(readings: list[Reading], predictor: Predictor) -> None:
    """Fill in each reading's probabilities, BATCH pictures at a time."""
    for start in range(0, len(readings), BATCH):
        batch = readings[start : start + BATCH]
        images = np.stack([reading.digit_image for reading in batch])[:, None]
        for reading, row in zip(batch, predictor(images), strict=True):
            reading.probabilities = np.asarray(row, np.float32)


def draw_preview(readings: list[Reading], out: Path) -> None:
    """A sheet: each picture as handed over, its 28x28 form, the digit and its probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = readings[:PREVIEW_LIMIT]
    columns = min(len(shown), 5)
    rows = -(-len(shown) // columns)
    figure, axes = plt.subplots(rows, 2 * columns, figsize=(2.4 * columns, 1.5 * rows),
                                squeeze=False)  # fmt: skip
    for axis in axes.flat:
        axis.axis("off")
    for index, reading in enumerate(shown):
        row, column = divmod(index, columns)
        digit = int(reading.probabilities.argmax())
        axes[row, 2 * column].imshow(reading.picture.convert("RGB"))
        axes[row, 2 * column].set_title(reading.path.name[:18], fontsize=7)
        axes[row, 2 * column + 1].imshow(reading.digit_image, cmap="gray", vmin=0, vmax=1)
        axes[row, 2 * column + 1].set_title(
            f"{digit} ({reading.probabilities[digit]:.1%})", fontsize=9
        )
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Which digit is in each picture (PNG, JPEG, BMP, GIF, TIFF, WebP, ...)."
    )
    parser.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image or folder")
    parser.add_argument(
        "--model",
        help=f"model.pt, a folder holding one, or an MLflow model URI such as "
        f"models:/mnist_sweep_mlp@champion (default: {CHAMPION} if the store holds it, else "
        f"the newest {KEPT} here)",
    )
    parser.add_argument(
        "--tracking-uri", metavar="URI",
        help="MLflow store of a models:/ URI and of the champion (default: $MLFLOW_TRACKING_URI, "
        "else ./mlflow.db)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--preview", type=Path, metavar="OUT.png",
        help=f"draw each picture, its 28x28 form and the prediction (first {PREVIEW_LIMIT})",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        classifier, which = open_model(args.model, args.tracking_uri)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(which, file=sys.stderr)
    readings, errors = read_all(args.paths, preview=args.preview is not None)
    for error in errors:
        print(error, file=sys.stderr)
    if readings:
        classify(readings, predictor_of(classifier))
        try:
            for reading in readings:
                print(reading.line(args.json), flush=True)
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if args.preview:
            draw_preview(readings, args.preview)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
