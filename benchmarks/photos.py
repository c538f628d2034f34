"""MNIST test digits as phones and scanners produce them, and predict's accuracy on them.

    python benchmarks/photos.py --model M [--per-condition 150] [--before REV] [--out DIR]

`handed_over(digit, rng)` turns a 28x28 MNIST digit into a clean picture (blue ink on cream
paper), `photographed(digit, condition, rng)` into a picture under one of CONDITIONS (uneven
light, sensor noise, JPEG, paper texture, blur and rotation, thin and thick pens, ink colours,
a page's edge and dust, a small digit in a 640x480 frame, chalk on a board, and all of a
phone's faults at once); the tests import both for their pictures. Run as a script, it prints
the model's accuracy by condition through images.to_mnist (and through the to_mnist of git
revision --before, in the same run), on the same digits as raw test tensors, and
`python -m mnist_sweep.predict`'s images per second on a folder of the pictures (--out keeps
them there).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from mnist_sweep.data import DataFiles, torchvision_dataset
from mnist_sweep.images import disk, to_mnist
from mnist_sweep.predict import load_predictor

REPO = Path(__file__).resolve().parents[1]

PAPER = np.array([236.0, 232.0, 222.0])  # printer paper under indoor light
INKS = {"blue": (30, 50, 150), "black": (25, 25, 30), "red": (170, 30, 35), "green": (20, 95, 50)}
CREAM, BLUE_PEN = np.array([250, 244, 228]), np.array([25, 40, 140])  # of handed_over


def handed_over(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """An MNIST digit (28x28 uint8) as a person might hand it over: blue ink on cream paper,
    upscaled 3-7x, off-centre on a larger page (tests, benchmarks and the README's example)."""
    side = 28 * int(rng.integers(3, 8))
    upscaled = Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
    ink = np.clip(np.asarray(upscaled, np.float32) / 255, 0, 1)[..., None]
    height, width = side + rng.integers(20, 240, size=2)
    page = np.empty((height, width, 3), np.float32)
    page[:] = CREAM
    top, left = rng.integers(0, height - side), rng.integers(0, width - side)
    page[top : top + side, left : left + side] = CREAM * (1 - ink) + BLUE_PEN * ink
    return Image.fromarray(page.round().astype(np.uint8))


def stroke(digit: np.ndarray, side: int, pen: float = 1.0) -> np.ndarray:
    """The digit's ink at side x side in [0, 1], drawn with a pen `pen` times MNIST's width
    (eroded below 1, dilated above): solid strokes with soft edges, as a pen leaves them."""
    ink = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC))
    ink = ink.astype(np.float32) / 255
    reach = round(abs(pen - 1) * side / 28 * 1.2)  # MNIST's strokes are ~2.4 px of 28 wide
    if reach and pen < 1:
        ink = ndimage.grey_erosion(ink, footprint=disk(reach))
    elif reach:
        ink = ndimage.grey_dilation(ink, footprint=disk(reach))
    return np.clip((ink - 0.25) / 0.5, 0, 1)


def on_page(ink: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """`ink` pasted at a random place of a blank page of `shape` (0 = paper)."""
    page = np.zeros(shape, np.float32)
    top, left = (int(rng.integers(0, room + 1)) for room in np.subtract(shape, ink.shape))
    page[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    return page


def lighting(shape: tuple[int, int], rng: np.random.Generator, depth: float) -> np.ndarray:
    """Light falling on the page: a gradient from one side plus a vignette, 1 at the
    brightest, down to about 1 - depth."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    rows, cols = rows / shape[0] - 0.5, cols / shape[1] - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    ramp = rows * np.cos(angle) + cols * np.sin(angle) + 0.5
    vignette = rows**2 + cols**2
    light = 1 - depth * (0.7 * ramp + 0.6 * vignette)
    return light / light.max()


def texture(shape: tuple[int, int], rng: np.random.Generator, strength: float) -> np.ndarray:
    """Paper grain: blotches of a few pixels' scale and fibres, multiplicative around 1."""
    grain = ndimage.gaussian_filter(rng.normal(0, 1, shape), 2.5) * 2.5
    fibres = ndimage.gaussian_filter(rng.normal(0, 1, shape), (0.5, 6)) * 4
    return 1 + strength * (grain + fibres).astype(np.float32)


def render(ink: np.ndarray, colour, paper, light, grain) -> np.ndarray:
    """RGB float page: paper and ink colour mixed by `ink`, lit by `light`, grained."""
    paper, colour = np.asarray(paper, np.float32), np.asarray(colour, np.float32)
    mixed = paper * (1 - ink[..., None]) + colour * ink[..., None]
    return mixed * (light * grain)[..., None]


def camera(
    page: np.ndarray, rng: np.random.Generator, blur=0.0, noise=0.0, angle=0.0, jpeg=None
) -> Image.Image:
    """What the sensor makes of `page`: blur, rotation, noise in grey levels, JPEG."""
    picture = Image.fromarray(np.clip(page, 0, 255).round().astype(np.uint8))
    if angle:
        fill = tuple(int(v) for v in np.median(page.reshape(-1, 3), 0))
        picture = picture.rotate(angle, Image.Resampling.BICUBIC, fillcolor=fill)
    if blur:
        picture = picture.filter(ImageFilter.GaussianBlur(blur))
    if noise:
        noisy = np.asarray(picture, np.float32) + rng.normal(0, noise, (*picture.size[::-1], 3))
        picture = Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))
    if jpeg:
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=jpeg)
        picture = Image.open(buffer)
        picture.load()
    return picture


def _frame(rng: np.random.Generator) -> tuple[int, tuple[int, int]]:
    """A digit's side (4-7x MNIST's) and a page 30-200 pixels larger each way."""
    side = 28 * int(rng.integers(4, 8))
    return side, (side + int(rng.integers(30, 200)), side + int(rng.integers(30, 200)))


def _plain(digit, rng, pen=1.0, colour=INKS["blue"], depth=0.0, grain=0.0, **faults):
    side, shape = _frame(rng)
    ink = on_page(stroke(digit, side, pen), shape, rng)
    page = render(ink, colour, PAPER, lighting(shape, rng, depth), texture(shape, rng, grain))
    return camera(page, rng, **faults)


def _page_edge(digit, rng):
    """A scan or photo showing the page's edge as a dark line along one side, and dust."""
    side, shape = _frame(rng)
    ink = on_page(stroke(digit, side), shape, rng)
    width, offset = int(rng.integers(2, 5)), int(rng.integers(0, 8))
    turns = int(rng.integers(0, 4))  # which side: the line is drawn on the left of a turned page
    ink = np.rot90(ink, turns).copy()
    ink[:, offset : offset + width] = 0.8
    ink = np.rot90(ink, -turns).copy()
    dust = rng.integers(0, ink.shape, size=(30, 2))
    ink[dust[:, 0], dust[:, 1]] = 0.7
    page = render(ink, INKS["black"], PAPER, 1.0, texture(ink.shape, rng, 0.02))
    return camera(page, rng, noise=3, jpeg=85)


def _small_in_frame(digit, rng):
    side = int(rng.integers(40, 90))
    ink = on_page(stroke(digit, side, 0.8), (480, 640), rng)
    light, grain = lighting(ink.shape, rng, 0.35), texture(ink.shape, rng, 0.02)
    page = render(ink, INKS["black"], PAPER * 0.85, light, grain)
    return camera(page, rng, blur=0.6, noise=4, jpeg=85)


def _chalk(digit, rng):
    side, shape = _frame(rng)
    ink = on_page(stroke(digit, side, 1.3), shape, rng)
    ink *= rng.uniform(0.6, 1.0, ink.shape).astype(np.float32)  # chalk leaves gaps
    board = (40, 55, 48)
    page = render(ink, (215, 220, 215), board, lighting(shape, rng, 0.3), texture(shape, rng, 0.05))
    return camera(page, rng, blur=0.8, noise=5, jpeg=80)


def _phone(digit, rng):
    """All of a phone photo's faults at once, each drawn at random within its range."""
    colour = list(INKS.values())[int(rng.integers(0, len(INKS)))]
    return _plain(
        digit, rng, pen=rng.uniform(0.5, 1.5), colour=colour, depth=rng.uniform(0.2, 0.5),
        grain=0.02, blur=rng.uniform(0, 1.2), noise=rng.uniform(2, 6),
        angle=rng.uniform(-10, 10), jpeg=int(rng.integers(70, 90)),
    )  # fmt: skip


Condition = Callable[[np.ndarray, np.random.Generator], Image.Image]
CONDITIONS: dict[str, Condition] = {
    "clean": handed_over,  # what the tests handed over before: flat, noise-free
    "lighting": lambda digit, rng: _plain(digit, rng, depth=0.5),
    "noise": lambda digit, rng: _plain(digit, rng, noise=6),
    "jpeg": lambda digit, rng: _plain(digit, rng, noise=2, jpeg=75),
    "paper": lambda digit, rng: _plain(digit, rng, grain=0.04),
    "blur_rotate": lambda digit, rng: _plain(digit, rng, blur=1.5, angle=rng.uniform(-12, 12)),
    "thin_pen": lambda digit, rng: _plain(digit, rng, pen=0.4, colour=INKS["black"]),
    "thick_pen": lambda digit, rng: _plain(digit, rng, pen=1.8),
    "ink_colours": lambda digit, rng: _plain(
        digit, rng, colour=list(INKS.values())[int(rng.integers(0, len(INKS)))]
    ),
    "page_edge": _page_edge,
    "small_in_frame": _small_in_frame,
    "chalk": _chalk,
    "phone": _phone,
}


def photographed(digit: np.ndarray, condition: str, rng: np.random.Generator) -> Image.Image:
    """MNIST `digit` (28x28 uint8) as a picture taken under `condition` (one of CONDITIONS)."""
    return CONDITIONS[condition](digit, rng)


def photo_set(digits: np.ndarray, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Each digit under the conditions in turn (digit i under condition i mod 13), seeded."""
    rng, names = np.random.default_rng(seed), list(CONDITIONS)
    return [
        (names[i % len(names)], photographed(digit, names[i % len(names)], rng))
        for i, digit in enumerate(digits)
    ]


def git_module(revision: str, path: str = "mnist_sweep/images.py") -> types.ModuleType:
    """The module at `path` as it was at git `revision`, imported under another name."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:{path}"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    module = types.ModuleType(f"images_at_{revision}")
    exec(compile(source, f"{revision}:{path}", "exec"), module.__dict__)
    return module


def accuracy_by_condition(to_mnist, shots, labels, predictor) -> dict[str, float]:
    """Share of pictures named right, per condition; a picture refused counts as wrong."""
    forms = []
    for _, picture in shots:
        try:
            forms.append(to_mnist(picture))
        except ValueError:  # ImageError: no ink found
            forms.append(np.zeros((28, 28), np.float32))
    named = predictor(np.stack(forms)[:, None]).argmax(1) == labels
    return _by_condition(shots, named)


def _by_condition(shots, named: np.ndarray) -> dict[str, float]:
    conditions = np.array([condition for condition, _ in shots])
    table = {name: float(named[conditions == name].mean()) for name in CONDITIONS}
    return table | {"all": float(named.mean())}


def images_per_second(shots, model: str, folder: Path) -> float:
    """`python -m mnist_sweep.predict` on the pictures as files: further images per second
    of the whole process on all of them against the same process on one."""
    for index, (condition, picture) in enumerate(shots):
        picture.save(folder / f"{index:05d}_{condition}.png")
    cli = [sys.executable, "-m", "mnist_sweep.predict", "--model", model]
    started = time.perf_counter()
    subprocess.run([*cli, str(folder / f"00000_{shots[0][0]}.png")], check=True,
                   capture_output=True)  # fmt: skip
    one = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([*cli, str(folder)], check=False, capture_output=True)
    return (len(shots) - 1) / (time.perf_counter() - started - one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="what predict's --model takes")
    parser.add_argument("--per-condition", type=int, default=150)
    parser.add_argument("--before", help="git revision whose images.to_mnist to compare")
    parser.add_argument("--out", type=Path, help="write the pictures here and keep them")
    parser.add_argument("--root", help="MNIST data folder (default: the usual cache)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}")  # fmt: skip
    test = torchvision_dataset(DataFiles(args.root), train=False)
    count = args.per_condition * len(CONDITIONS)
    digits, labels = test.data[:count].numpy(), test.targets[:count].numpy()
    shots = photo_set(digits)
    predictor = load_predictor(args.model)
    raw = predictor((digits[:, None] / 255).astype(np.float32)).argmax(1) == labels
    columns = {"raw tensors": _by_condition(shots, raw)}
    versions = {"to_mnist now": to_mnist}
    if args.before:
        versions = {f"to_mnist at {args.before}": git_module(args.before).to_mnist, **versions}
    print(f"{count} pictures, {args.per_condition} per condition")
    for name, version in versions.items():
        started = time.perf_counter()
        columns[name] = accuracy_by_condition(version, shots, labels, predictor)
        print(f"{name}: {(time.perf_counter() - started) / count * 1000:.1f} ms per picture "
              "in-process, the model included")  # fmt: skip
    print("| condition | " + " | ".join(columns) + " |")
    print("| --- " * (len(columns) + 1) + "|")
    for name in [*CONDITIONS, "all"]:
        cells = " | ".join(f"{column[name]:.2%}" for column in columns.values())
        print(f"| {name} | {cells} |")
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.out or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        rate = images_per_second(shots, args.model, folder)
        print(f"python -m mnist_sweep.predict on the {count} files: {rate:.0f} further images/s")


if __name__ == "__main__":
    main()
