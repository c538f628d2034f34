"""Pictures of handwritten digits brought to MNIST's own form: the one preprocessing for image
files (predict, the notebook, anything that reads a photo or a scan)."""

from __future__ import annotations

import math
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from mnist_sweep.models import IMAGE_SIDE

BOX_SIDE = 20  # MNIST fitted each digit's ink box into 20x20, aspect kept
# MNIST's mean centre of mass in (row, column) pixel indices: 14.0 within 0.05 over its
# digits (tests/test_predict.py measures it on the test set).
CENTRE = 14.0
MIN_CONTRAST = 0.15  # ink darker (or lighter) than the paper by less than this: no ink
# A picture is decoded whole only up to this many pixels (160 MB as RGBA): a 600 dpi A4 scan
# is 35 million. JPEG is decoded at 1/2 to 1/8 scale first (Image.draft), so larger photos
# pass; any other format above it is refused before decoding.
MAX_PIXELS = 40_000_000
WORK_SIDE = 1024  # pictures are reduced to at most this many pixels a side before anything else
# Modes that Image.reduce does not take, and what they become first.
REDUCIBLE = {"1": "L", "P": "RGBA", "I;16": "I", "I;16B": "I", "I;16L": "I", "I;16N": "I"}
FLOAT_RANGES = (1.0, 255.0, 65535.0)  # full scales of float, 8-bit and 16-bit greys
UNSHOWN = ("I", "F", "LAB")  # Pillow clips the first two at 255 to show them, and LAB fails
# Each step below is measured by `python benchmarks/photos.py` (150 pictures under each of its
# 13 conditions, docs/results.md's model: 97% on the same digits as test tensors, 96% on the
# pictures); a figure is the accuracy on the pictures of a condition with the step, then
# without it (or as changed).
# The paper's light is a low percentile of the picture (ink high) over a window a third of its
# side, at COARSE_SIDE pixels a side: uneven light 95% vs 61% with one level for the whole
# picture, phone photos 91% vs 83%; a window the picture's side gives 96% in all too, at twice
# the time. The 20th percentile, not the median, keeps strokes that fill half the window:
# thick pen 96% vs 87%.
COARSE_SIDE = 32
WINDOW = 1 / 3
PAPER_PERCENTILE = 20
# Ink is above Otsu's threshold (JPEG 97% vs 57%, phone photos 91% vs 55% without it) and at
# least NOISE_SIGMAS times the paper's noise above the paper (a small digit in a 640x480 frame
# 95% vs 78% without: Otsu alone splits the noise of a picture that is almost all paper).
NOISE_SIGMAS = 5.0
# Components with less than KEEP_SHARE of the largest one's area are specks: pictures with a
# page's edge and dust 97% vs 13% if all are kept, phone photos 91% vs 85%; 0.1 cuts pieces of
# broken thin strokes (thin pen 89% vs 91%). One spanning LINE_SPAN of the picture and at most
# LINE_SHARE as wide as long is the page's edge: pictures showing it 97% vs 17% if kept.
KEEP_SHARE = 0.04
LINE_SPAN = 0.8
LINE_SHARE = 0.1
# MNIST's strokes are 0.13 of the digit's box (median over 2,000 test digits, twice the area
# over the outline); strokes thinner than THIN of that are widened to it: thin pen 91% vs 73%.
MNIST_WIDTH = 0.13
THIN = 0.7


NO_INK = "no ink: the picture is blank or has no contrast"


class ImageError(ValueError):
    """A file that is not a picture of a digit: unreadable, empty, or without ink."""


def read_digit(path: Path | str) -> tuple[np.ndarray, Image.Image]:
    """The picture at `path` in MNIST's form (28x28 float32 in [0, 1]) and as read (its first
    frame, upright, reduced); ImageError naming the file if it is not a picture with ink."""
    try:
        image = read_picture(Path(path))
        form = to_mnist(image)
    except ImageError as error:
        raise ImageError(f"{path}: {error}") from error
    if image.mode in UNSHOWN:  # as 8-bit greys for display
        image = Image.fromarray((grey_levels(image) * 255).round().astype(np.uint8))
    return form, image


def read_picture(path: Path) -> Image.Image:
    """The file's first frame, upright (phone photos store their rotation apart), reduced to
    WORK_SIDE; ImageError if it is not a regular file, cannot be read or is not a picture."""
    refuse_special(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns above 89 million pixels; MAX_PIXELS is the limit that applies here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                return ImageOps.exif_transpose(reduced(opened))
    except ImageError:
        raise
    except OSError as error:
        if error.errno is not None:  # the system's refusal, not Pillow's
            raise ImageError(f"cannot read it ({error.strerror})") from error
        raise ImageError(f"not an image Pillow can read ({error})") from error
    except Exception as error:  # a damaged file can fail anywhere in a decoder
        raise ImageError(f"not an image Pillow can read ({error!r})") from error


def refuse_special(path: Path) -> None:
    """ImageError unless `path` is a regular file, checked before opening it: opening a FIFO
    waits for a writer forever, and a device may never end."""
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise ImageError(f"cannot read it ({error.strerror})") from error
    if not stat.S_ISREG(mode):
        raise ImageError("not a regular file (a folder, FIFO, socket or device)")


def reduced(image: Image.Image) -> Image.Image:
    """`image` with its long side at most WORK_SIDE, decoded within MAX_PIXELS."""
    image.draft(image.mode, (WORK_SIDE, WORK_SIDE))  # JPEG only: decode at 1/2..1/8 scale
    if image.width * image.height > MAX_PIXELS:
        raise ImageError(
            f"{image.width}x{image.height} pixels is more than the limit of "
            f"{MAX_PIXELS / 1e6:.0f} million (for JPEG: after decoding at 1/8 scale)"
        )
    if image.mode in REDUCIBLE:
        image = image.convert(REDUCIBLE[image.mode])
    return image.reduce(max(1, math.ceil(max(image.size) / WORK_SIDE)))


def to_mnist(image: Image.Image) -> np.ndarray:
    """Any picture of one digit -> 28x28 float32 in [0, 1] the way MNIST was made: grey, ink
    high, cropped to the ink, its box scaled (anti-aliased, aspect kept) to fit 20x20, and
    placed so that its centre of mass sits at the centre of the field."""
    ink = ink_map(reduced(image))
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    box = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = BOX_SIDE / max(box.shape)
    size = (max(1, round(box.shape[1] * scale)), max(1, round(box.shape[0] * scale)))
    digit = np.asarray(Image.fromarray(box).resize(size, Image.Resampling.LANCZOS))
    return centred(np.clip(digit, 0.0, 1.0))


def ink_map(image: Image.Image) -> np.ndarray:
    """Ink as values in [0, 1] and paper as 0, whichever is darker; ImageError if blank."""
    if image.has_transparency_data and image.convert("RGBA").getextrema()[3][0] < 255:
        # Strokes drawn on a transparent canvas: the opaque part is the ink, with no paper.
        relief = np.asarray(image.convert("RGBA").getchannel("A"), np.float32) / 255
    else:
        relief = off_paper(grey_levels(image))
    if relief.size == 0 or relief.max() < MIN_CONTRAST:
        raise ImageError(NO_INK)
    mask = digit_mask(relief)
    ink = np.where(mask, relief / relief[mask].max(), 0).astype(np.float32)
    return thickened(ink, mask)


def off_paper(grey: np.ndarray) -> np.ndarray:
    """How far each pixel is from the paper under it, ink high (dark ink on light paper or
    light on dark): the paper's light, estimated at large scale, taken away."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    signed = 1 - grey if np.median(border) >= 0.5 else grey  # the digit rarely covers half the edge
    step = max(1, math.ceil(max(grey.shape) / COARSE_SIDE))
    coarse = np.asarray(Image.fromarray(signed).reduce(step))
    size = max(3, round(max(coarse.shape) * WINDOW))
    paper = ndimage.percentile_filter(coarse, PAPER_PERCENTILE, size=size, mode="nearest")
    light = Image.fromarray(ndimage.gaussian_filter(paper, 1.0))
    light = np.asarray(light.resize(grey.shape[::-1], Image.Resampling.BILINEAR))
    return np.clip(signed - light, 0, None)


def digit_mask(relief: np.ndarray) -> np.ndarray:
    """The digit's pixels: above a threshold chosen from the picture, in the dominant ink
    components; specks, and straight lines across the picture (a page's edge), dropped."""
    labels, count = ndimage.label(relief > threshold(relief), np.ones((3, 3)))
    if count == 0:
        raise ImageError(NO_INK)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    lines = [is_line(box, relief.shape) for box in ndimage.find_objects(labels)]
    if not all(lines):  # a lone line may be a 1
        areas = np.where(lines, 0, areas)
    return np.isin(labels, np.flatnonzero(areas >= KEEP_SHARE * areas.max()) + 1)


def is_line(box: tuple[slice, slice], shape: tuple[int, int]) -> bool:
    """Whether a component in `box` spans most of the picture and is narrow: a line."""
    sides = [piece.stop - piece.start for piece in box]
    axis = int(np.argmax(sides))
    return sides[axis] >= LINE_SPAN * shape[axis] and min(sides) <= LINE_SHARE * sides[axis]


def threshold(relief: np.ndarray) -> float:
    """Otsu's threshold of the picture's relief, and never within NOISE_SIGMAS of the paper's
    noise (robust: the median absolute deviation of the mostly-paper picture)."""
    noise = 1.4826 * np.median(np.abs(relief - np.median(relief)))
    return max(otsu(relief), float(np.median(relief) + NOISE_SIGMAS * noise))


def otsu(values: np.ndarray) -> float:
    """The cut that best splits `values` into two classes (most variance between them)."""
    counts, edges = np.histogram(values, 256)
    weight = np.cumsum(counts)
    mass = np.cumsum(counts * edges[:-1])
    total, everything = weight[-1], mass[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (everything * weight - total * mass) ** 2 / (weight * (total - weight))
    return float(edges[np.nanargmax(between[:-1]) + 1])


def thickened(ink: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`ink` with its strokes widened to MNIST's share of the box when they are much thinner."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    width = stroke_width(mask)
    if width >= THIN * MNIST_WIDTH * box:
        return ink
    radius = round((MNIST_WIDTH * box - width) / 2)
    return ndimage.grey_dilation(ink, footprint=disk(radius)) if radius > 0 else ink


def stroke_width(mask: np.ndarray) -> float:
    """Mean width of the strokes in `mask`: twice their area over their outline's length."""
    outline = np.count_nonzero(mask & ~ndimage.binary_erosion(mask))
    return 2 * np.count_nonzero(mask) / max(outline, 1)


def disk(radius: int) -> np.ndarray:
    """A round footprint of `radius` pixels."""
    rows, cols = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return rows**2 + cols**2 <= radius**2


def grey_levels(image: Image.Image) -> np.ndarray:
    """The picture as greys in [0, 1]; 32-bit and float greys scaled by their full scale (the
    smallest of 1, 255, 65535 that holds their brightest value), not clipped at 255."""
    if image.mode == "LAB":  # Pillow converts LAB to no other mode; its L band is lightness
        image = image.getchannel("L")
    if image.mode not in ("I", "F"):
        try:
            return np.asarray(image.convert("L"), np.float32) / 255
        except ValueError as error:
            raise ImageError(f"cannot make {image.mode} pictures grey ({error})") from error
    grey = np.nan_to_num(np.asarray(image, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    full = next((top for top in FLOAT_RANGES if grey.max() <= top), grey.max())
    return np.clip(grey / full, 0, 1)


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
