"""images.read_digit and to_mnist on what phones, scanners and hostile users hand over."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mnist_sweep
from mnist_sweep import images
from mnist_sweep.images import ImageError, read_digit, to_mnist
from mnist_sweep.predict import main, read_all

from benchmarks import photos
from benchmarks.photos import handed_over

PICTURES = 1040  # 80 per condition of benchmarks/photos.py


@pytest.fixture(scope="module")
def model(trained_run: Path) -> torch.nn.Module:
    return mnist_sweep.load_model(trained_run / "out" / "model.pt")


def accuracy(model: torch.nn.Module, forms: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        named = model(torch.from_numpy(forms).float().unsqueeze(1)).argmax(1).numpy()
    return float(np.mean(named == labels))


@pytest.mark.slow
def test_photographed_digits_score_within_two_points_of_the_raw_test_tensors(
    model, test_digits
) -> None:
    digits, labels = test_digits[0][:PICTURES], test_digits[1][:PICTURES]
    shots = photos.photo_set(digits, seed=1)
    assert len({condition for condition, _ in shots}) == len(photos.CONDITIONS) >= 12
    forms = np.stack([to_mnist(picture) for _, picture in shots])
    raw = accuracy(model, digits / 255, labels)
    assert raw - accuracy(model, forms, labels) <= 0.02, (accuracy(model, forms, labels), raw)


def test_the_generator_is_seeded(test_digits) -> None:
    digits = test_digits[0][:13]
    first, again = photos.photo_set(digits, seed=3), photos.photo_set(digits, seed=3)
    other = photos.photo_set(digits, seed=4)
    pixels = [[np.asarray(picture) for _, picture in shots] for shots in (first, again, other)]
    assert all(np.array_equal(a, b) for a, b in zip(pixels[0], pixels[1], strict=True))
    assert not all(a.shape == b.shape and np.array_equal(a, b)
                   for a, b in zip(pixels[0], pixels[2], strict=True))  # fmt: skip


def test_uneven_light_noise_and_a_page_edge_leave_the_clean_form(test_digits) -> None:
    digit = test_digits[0][7]
    clean = to_mnist(Image.fromarray(digit))
    rng = np.random.default_rng(5)
    for condition in ("lighting", "noise", "page_edge", "small_in_frame", "chalk"):
        form = to_mnist(photos.photographed(digit, condition, rng))
        assert np.abs(form - clean).mean() < 0.08, condition


def test_blank_photographs_have_no_ink() -> None:
    rng, blank = np.random.default_rng(6), np.zeros((28, 28), np.uint8)
    for condition in ("lighting", "noise", "jpeg", "small_in_frame", "chalk"):
        with pytest.raises(ImageError, match="no ink"):
            to_mnist(photos.photographed(blank, condition, rng))


def test_a_thin_pen_is_widened_towards_mnists_strokes(test_digits) -> None:
    digit = test_digits[0][0]
    thin = photos.photographed(digit, "thin_pen", np.random.default_rng(0))
    ink = lambda form: (form > 0.5).sum()  # noqa: E731
    assert ink(to_mnist(thin)) > 0.7 * ink(to_mnist(Image.fromarray(digit)))


def grey16(digit: np.ndarray) -> Image.Image:
    return Image.fromarray(digit.astype(np.uint16) * 257)  # 0..65535: mode I;16


def float_grey(digit: np.ndarray) -> Image.Image:
    return Image.fromarray(digit.astype(np.float32) / 255)  # mode F, 0..1


@pytest.mark.parametrize(
    ("suffix", "made"),
    [
        (".png", grey16),
        (".tif", float_grey),
        (".png", lambda d: Image.fromarray(255 - d).convert("RGB").quantize(16)),  # palette
        (".jpg", lambda d: Image.fromarray(255 - d).convert("CMYK")),
        (".tif", lambda d: Image.fromarray(d).convert("LA")),
        (".png", lambda d: Image.fromarray(255 - d).convert("1")),
        (".tif", lambda d: Image.fromarray(255 - d).convert("RGB").convert("LAB")),
    ],
    ids=["16-bit", "float", "palette", "cmyk", "grey-alpha", "one-bit", "lab"],
)
def test_every_mode_gives_the_form_of_the_8_bit_grey_picture(
    test_digits, tmp_path: Path, suffix, made
) -> None:
    digit = np.kron(test_digits[0][2], np.ones((4, 4), np.uint8))
    path = tmp_path / f"digit{suffix}"
    made(digit).save(path)
    form, _ = read_digit(path)
    tolerance = 0.06 if suffix == ".jpg" or "1" in made(digit).mode else 0.01
    assert np.abs(form - to_mnist(Image.fromarray(digit))).mean() < tolerance


def test_an_animated_picture_is_read_by_its_first_frame(test_digits, tmp_path: Path) -> None:
    first, second = (Image.fromarray(255 - test_digits[0][index]) for index in (0, 1))
    first.save(tmp_path / "two.gif", save_all=True, append_images=[second], duration=100)
    form, _ = read_digit(tmp_path / "two.gif")
    assert np.abs(form - to_mnist(first)).mean() < 0.01
    assert np.abs(form - to_mnist(second)).mean() > 0.05


def test_a_phone_photo_is_turned_by_its_exif_orientation(test_digits, tmp_path: Path) -> None:
    upright = Image.fromarray(255 - np.kron(test_digits[0][0], np.ones((4, 4), np.uint8)))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    form, picture = read_digit(tmp_path / "phone.jpg")
    assert picture.size == upright.size
    assert np.abs(form - to_mnist(upright)).mean() < 0.03
    assert np.abs(form - to_mnist(stored)).mean() > 0.05


def test_a_large_photo_is_reduced_before_it_is_read(test_digits, tmp_path: Path) -> None:
    page = Image.new("L", (6000, 4500), 235)
    page.paste(Image.fromarray(255 - test_digits[0][0]).resize((1500, 1500)), (2000, 1500))
    page.save(tmp_path / "big.jpg", quality=85)
    page.save(tmp_path / "big.png", compress_level=1)
    for name in ("big.jpg", "big.png"):
        form, picture = read_digit(tmp_path / name)
        assert max(picture.size) <= images.WORK_SIDE
        assert np.abs(form - to_mnist(page)).mean() < 0.03


def png_header(width: int, height: int) -> bytes:
    """A PNG that announces width x height greys and holds one empty row: what a
    decompression bomb looks like before decoding."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1))
    chunks = [_chunk(b"IHDR", header), _chunk(b"IDAT", rows), _chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def added_peak_kb(path: Path) -> tuple[str, int]:
    """What reading `path` says, and how much it raised the peak resident memory of a fresh
    process (VmHWM: ru_maxrss would keep pytest's); its imports (torch, through
    mnist_sweep.models) are not the picture's."""
    script = (
        "import sys\n"
        "from mnist_sweep.images import ImageError, read_digit\n"
        "peak = lambda: int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n"
        "before = peak()\n"
        "try:\n    read_digit(sys.argv[1])\n    print('read')\n"
        "except ImageError as error:\n    print(error)\n"
        "print(peak() - before)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    said, added = done.stdout.splitlines()
    return said, int(added)


@pytest.mark.slow
def test_memory_stays_under_500_mb_for_a_13000_pixel_square_png(tmp_path: Path) -> None:
    Image.new("L", (13000, 13000), 255).save(tmp_path / "huge.png", compress_level=1)
    said, added_kb = added_peak_kb(tmp_path / "huge.png")
    assert "13000x13000 pixels is more than the limit of 40 million" in said
    assert added_kb < 500 * 1024
    page = Image.new("RGB", (6000, 6000), (235, 235, 235))  # 36 million pixels: read
    page.paste((20, 20, 20), (2000, 2000, 3000, 4000))
    page.save(tmp_path / "large.png", compress_level=1)
    said, added_kb = added_peak_kb(tmp_path / "large.png")
    assert said == "read" and added_kb < 500 * 1024, (said, added_kb)


def test_a_fifo_is_refused_without_being_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    started = time.perf_counter()
    with pytest.raises(ImageError, match=r"pipe\.png: not a regular file"):
        read_digit(tmp_path / "pipe.png")
    assert time.perf_counter() - started < 1


@pytest.mark.slow
def test_hostile_files_get_one_line_each_and_the_rest_is_predicted(
    trained_run: Path, test_digits, tmp_path: Path, capsys, monkeypatch
) -> None:
    handed_over(test_digits[0][0], np.random.default_rng(1)).save(tmp_path / "good.png")
    grey16(np.kron(test_digits[0][1], np.ones((3, 3), np.uint8))).save(tmp_path / "deep.png")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "bomb.png").write_bytes(png_header(20000, 20000))
    (tmp_path / "huge.png").write_bytes(png_header(13000, 13000))
    (tmp_path / "cut.png").write_bytes((tmp_path / "good.png").read_bytes()[:300])
    locked = tmp_path / "locked"
    locked.mkdir()
    real_iterdir = Path.iterdir
    monkeypatch.setattr(  # root reads any folder; this folder refuses even root
        Path, "iterdir",
        lambda path: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
        if path == locked else real_iterdir(path),
    )  # fmt: skip
    inside_a_file = tmp_path / "good.png" / "x.png"
    code = main(["--json", "--model", str(trained_run / "out"), str(tmp_path), str(locked),
                 str(inside_a_file)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    assert sorted(json.loads(line)["path"] for line in out.splitlines()) == [
        str(tmp_path / "deep.png"), str(tmp_path / "good.png")]  # fmt: skip
    lines = [line for line in err.splitlines() if not line.startswith("model: ")]
    expected = {"pipe.png": "not a regular file", "bomb.png": "decompression bomb",
                "huge.png": "13000x13000 pixels", "cut.png": "not an image Pillow can read",
                "locked": "cannot list this folder (Permission denied)",
                "x.png": "cannot read it (Not a directory)"}  # fmt: skip
    assert len(lines) == len(expected), lines
    for name, problem in expected.items():
        [line] = [line for line in lines if name in line]
        assert line.startswith("error: ") and problem in line, line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a folder whatever its permissions")
def test_a_folder_without_read_permission_is_one_line(test_digits, tmp_path: Path) -> None:
    handed_over(test_digits[0][0], np.random.default_rng(1)).save(tmp_path / "good.png")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0)
    try:
        readings, errors = read_all([locked, tmp_path / "good.png"])
    finally:
        locked.chmod(0o700)
    assert [reading.path.name for reading in readings] == ["good.png"]
    assert errors == [f"error: {locked}: cannot list this folder (Permission denied)"]
