"""Pictures of handwritten digits brought to MNIST's own form: the one preprocessing for image
files (predict, the notebook, anything that reads a photo or a scan)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_sweep.models import IMAGE_SIDE

BOX_SIDE = 20  # MNIST fitted each digit's ink box into 20x20, aspect kept
# MNIST's mean centre of mass in (row, column) pixel indices: 14.0 within 0.05 over its
# digits (tests/test_predict.py measures it on the test set).
CENTRE = 14.0
MIN_CONTRAST = 0.15  # ink darker (or lighter) than the paper by less than this: no ink
# Below this share of the darkest ink is paper: its texture, JPEG noise, uneven light.
PAPER_NOISE = 0.1
PAPER, PEN = np.array([250, 244, 228]), np.array([25, 40, 140])  # of handed_over


class ImageError(ValueError):
    """A file that is not a picture of a digit: unreadable, empty, or without ink."""


def read_digit(path: Path | str) -> tuple[np.ndarray, Image.Image]:
    """The picture at `path` in MNIST's form (28x28 float32 in [0, 1]) and as read; ImageError
    naming the file if it is not a readable picture with ink."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)  # phone photos store their rotation apart
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as error:
        raise ImageError(f"{path}: not an image Pillow can read ({error})") from error
    try:
        return to_mnist(image), image
    except ImageError as error:
        raise ImageError(f"{path}: {error}") from error


def to_mnist(image: Image.Image) -> np.ndarray:
    """Any picture of one digit -> 28x28 float32 in [0, 1] the way MNIST was made: grey, ink
    high, cropped to the ink, its box scaled (anti-aliased, aspect kept) to fit 20x20, and
    placed so that its centre of mass sits at the centre of the field."""
    ink = ink_map(image)
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    box = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = BOX_SIDE / max(box.shape)
    size = (max(1, round(box.shape[1] * scale)), max(1, round(box.shape[0] * scale)))
    digit = np.asarray(Image.fromarray(box).resize(size, Image.Resampling.LANCZOS))
    return centred(np.clip(digit, 0.0, 1.0))


def ink_map(image: Image.Image) -> np.ndarray:
    """Ink as values in [0, 1] and paper as 0, whichever is darker; ImageError if blank."""
    if image.has_transparency_data and image.convert("RGBA").getextrema()[3][0] < 255:
        # Strokes drawn on a transparent canvas: the opaque part is the ink.
        return _stretched(np.asarray(image.convert("RGBA").getchannel("A"), np.float32) / 255)
    grey = np.asarray(image.convert("L"), np.float32) / 255
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    paper = float(np.median(border))  # the digit rarely covers half the picture's edge
    return _stretched(paper - grey if paper >= 0.5 else grey - paper)


def _stretched(ink: np.ndarray) -> np.ndarray:
    if ink.size == 0 or ink.max() < MIN_CONTRAST:
        raise ImageError("no ink: the picture is blank or has no contrast")
    ink = ink / ink.max()
    # Ink above the floor keeps its value: stretching it back to [0, 1] instead cost accuracy
    # on the handed-over digits of tests/test_predict.py.
    return np.where(ink < PAPER_NOISE, 0.0, ink).astype(np.float32)


def centred(digit: np.ndarray) -> np.ndarray:
    """`digit` on a 28x28 field with its centre of mass at CENTRE (kept whole inside it)."""
    field = np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.float32)
    total = digit.sum()
    mass = [(digit.sum(1 - axis) * np.arange(digit.shape[axis])).sum() / total for axis in (0, 1)]
    top, left = (
        min(max(round(CENTRE - centre), 0), IMAGE_SIDE - length)
        for centre, length in zip(mass, digit.shape, strict=True)
    )
    field[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return field


def handed_over(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """An MNIST digit (28x28 uint8) as a person might hand it over: blue ink on cream paper,
    upscaled 3-7x, off-centre on a larger page (tests, benchmarks and the README's example)."""
    side = 28 * int(rng.integers(3, 8))
    upscaled = Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
    ink = np.clip(np.asarray(upscaled, np.float32) / 255, 0, 1)[..., None]
    height, width = side + rng.integers(20, 240, size=2)
    page = np.empty((height, width, 3), np.float32)
    page[:] = PAPER
    top, left = rng.integers(0, height - side), rng.integers(0, width - side)
    page[top : top + side, left : left + side] = PAPER * (1 - ink) + PEN * ink
    return Image.fromarray(page.round().astype(np.uint8))
