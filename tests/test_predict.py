"""python -m mnist_sweep.predict and images.to_mnist: handwriting in image files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

import mnist_sweep
from mnist_sweep.checkpoints import read_checkpoint
from mnist_sweep.images import CENTRE, ImageError, to_mnist
from mnist_sweep.predict import ALIAS, CHAMPION, REGISTERED_MODEL, main
from mnist_sweep.serving import log_pyfunc
from mnist_sweep.tracking import DEFAULT_STORE, STORE_ENVIRONMENT, use_store

from benchmarks.photos import handed_over
from tests.support import compose_config


def accuracy(trained_run: Path) -> str:
    """The test accuracy recorded in the trained run's model.pt, as predict writes it."""
    return f"{read_checkpoint(trained_run / 'out' / 'model.pt')['metrics']['test_accuracy']:.4f}"


def predictions(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, list[dict], str]:
    code = main(["--json", *args])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


@pytest.mark.slow
def test_pictures_handed_over_score_within_a_point_of_the_raw_test_tensors(
    trained_run: Path, test_digits, tmp_path: Path, capsys
) -> None:
    images, labels = test_digits[0][:600], test_digits[1][:600]
    rng = np.random.default_rng(0)
    for index, digit in enumerate(images):
        suffix = ".jpg" if index % 3 == 0 else ".png"
        handed_over(digit, rng).save(tmp_path / f"{index:04d}{suffix}", quality=90)
    code, rows, err = predictions(capsys, "--model", str(trained_run / "out"), str(tmp_path))
    assert code == 0 and len(rows) == len(images)
    assert (
        err == f"model: {trained_run / 'out' / 'model.pt'}, test accuracy {accuracy(trained_run)}\n"
    )
    from_files = np.mean([row["digit"] for row in rows] == labels)
    model = mnist_sweep.load_model(trained_run / "out" / "model.pt")
    with torch.no_grad():
        raw = model(torch.from_numpy(images).unsqueeze(1).float() / 255).argmax(1).numpy()
    assert abs(from_files - np.mean(raw == labels)) <= 0.01, (from_files, np.mean(raw == labels))
    assert all(len(row["probabilities"]) == 10 for row in rows)
    assert all(row["probability"] == max(row["probabilities"]) for row in rows)


def test_an_mnist_digit_keeps_its_form_with_its_centre_of_mass_at_the_centre(
    test_digits,
) -> None:
    digit = test_digits[0][0]
    form = to_mnist(Image.fromarray(digit))
    assert form.shape == (28, 28) and form.dtype == np.float32
    assert np.abs(form - digit / 255).mean() < 0.03
    mass = [(form.sum(1 - axis) * np.arange(28)).sum() / form.sum() for axis in (0, 1)]
    np.testing.assert_allclose(mass, [CENTRE, CENTRE], atol=0.5)


def test_the_centre_is_mnists_mean_centre_of_mass(test_digits) -> None:
    digits = test_digits[0].astype(np.float64)
    total = digits.sum((1, 2))
    rows = (digits.sum(2) * np.arange(28)).sum(1) / total
    columns = (digits.sum(1) * np.arange(28)).sum(1) / total
    np.testing.assert_allclose([rows.mean(), columns.mean()], [CENTRE, CENTRE], atol=0.05)


def test_light_on_dark_dark_on_light_and_a_transparent_canvas_give_one_form(test_digits):
    digit = np.kron(test_digits[0][1], np.ones((4, 4), np.uint8))  # 112x112
    light_on_dark = Image.fromarray(digit)
    dark_on_light = Image.fromarray(255 - digit).convert("RGB")
    canvas = Image.fromarray(np.zeros(digit.shape, np.uint8)).convert("RGBA")
    canvas.putalpha(Image.fromarray(digit))
    forms = [to_mnist(image) for image in (light_on_dark, dark_on_light, canvas)]
    np.testing.assert_allclose(forms[1], forms[0], atol=1e-6)
    np.testing.assert_allclose(forms[2], forms[0], atol=1e-6)


def test_blank_pictures_have_no_ink() -> None:
    for blank in (Image.new("L", (50, 40), 255), Image.new("RGB", (9, 9), (30, 30, 30))):
        with pytest.raises(ImageError, match="no ink"):
            to_mnist(blank)


@pytest.mark.slow
def test_every_bad_file_gets_an_error_line_and_the_others_are_still_predicted(
    trained_run: Path, test_digits, tmp_path: Path, capsys
) -> None:
    handed_over(test_digits[0][0], np.random.default_rng(1)).save(tmp_path / "good.png")
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (80, 60), "white").save(tmp_path / "blank.png")
    (tmp_path / "nothing_here").mkdir()
    missing = tmp_path / "missing.png"
    model = str(trained_run / "out" / "model.pt")
    folders = [str(tmp_path), str(tmp_path / "nothing_here"), str(missing)]
    code, rows, err = predictions(capsys, "--model", model, *folders)
    assert code == 1
    assert [row["path"] for row in rows] == [str(tmp_path / "good.png")]
    which, *lines = err.splitlines()
    assert which.startswith(f"model: {model}")
    assert len(lines) == 5 and all(line.startswith("error: ") for line in lines)
    for name in ("notes.png", "empty.jpg", "nothing_here", "missing.png"):
        assert sum(name in line for line in lines) == 1, (name, lines)
    assert any("blank.png: no ink" in line for line in lines)


@pytest.mark.slow
def test_text_lines_and_the_preview_sheet(trained_run: Path, test_digits, tmp_path) -> None:
    rng = np.random.default_rng(2)
    for index in range(3):
        handed_over(test_digits[0][index], rng).save(tmp_path / f"{index}.png")
    preview = tmp_path / "sheet" / "preview.png"
    preview.parent.mkdir()
    assert main(["--model", str(trained_run / "out"), "--preview", str(preview),
                 str(tmp_path)]) == 0  # fmt: skip
    with Image.open(preview) as sheet:
        assert sheet.format == "PNG" and sheet.width > 300


@pytest.mark.slow
def test_the_default_model_is_the_champion_of_the_store_here_else_the_newest_kept_one(
    trained_run: Path, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORE_ENVIRONMENT, raising=False)  # mlflow.set_tracking_uri exports it
    Image.fromarray(np.kron(np.eye(4, dtype=np.uint8) * 255, np.ones((5, 5), np.uint8))).save(
        "one.png"
    )
    assert main(["one.png"]) == 2
    assert "no kept model" in capsys.readouterr().err
    assert not Path("mlflow.db").exists()  # looked for, never created
    for study, age in (("new", 0), ("old", 100)):
        kept = tmp_path / "multirun" / study / "best" / "model.pt"
        kept.parent.mkdir(parents=True)
        shutil.copy(trained_run / "out" / "model.pt", kept)
        os.utime(kept, (kept.stat().st_mtime - age,) * 2)
    old = tmp_path / "multirun" / "old" / "best" / "model.pt"
    old.write_bytes(b"damaged")
    os.utime(old, (old.stat().st_mtime - 100,) * 2)
    assert main(["one.png"]) == 0  # the damaged old one would fail
    assert capsys.readouterr().err == (
        f"model: {tmp_path}/multirun/new/best/model.pt, test accuracy {accuracy(trained_run)} "
        f"(the default: the newest kept, no {CHAMPION} in {DEFAULT_STORE})\n"
    )
    version = register_twice(trained_run / "out" / "model.pt")
    capsys.readouterr()
    assert main(["one.png"]) == 0  # versions, but no champion yet
    assert "(the default: the newest kept" in capsys.readouterr().err
    mlflow.MlflowClient(DEFAULT_STORE).set_registered_model_alias(REGISTERED_MODEL, ALIAS, version)
    assert main(["one.png"]) == 0
    assert capsys.readouterr().err == (
        f"model: {CHAMPION} (version 2) in {DEFAULT_STORE}, test accuracy "
        f"{accuracy(trained_run)} (the default)\n"
    )


def register_twice(checkpoint: Path) -> str:
    """Log `checkpoint` twice into the default store here and register both; the second's
    version."""
    previous = mlflow.get_tracking_uri()
    use_store(DEFAULT_STORE)  # unlike mlflow.set_tracking_uri, exports nothing to predict
    try:
        experiment = mlflow.create_experiment("champions")
        for _ in range(2):
            with mlflow.start_run(experiment_id=experiment):
                model = log_pyfunc(checkpoint)
            version = mlflow.register_model(model.model_uri, REGISTERED_MODEL).version
    finally:
        use_store(previous)
    return version


def test_the_default_champion_is_the_one_a_default_sweep_here_records(tmp_path: Path) -> None:
    cfg = compose_config()
    # The store of `python run.py` started in tmp_path, as Hydra resolves it.
    run_py = Path(mnist_sweep.__file__).parents[1] / "run.py"
    environment = {k: v for k, v in os.environ.items() if k != STORE_ENVIRONMENT}
    store = subprocess.run(
        [sys.executable, str(run_py), "--cfg", "job", "--resolve", "-p", "mlflow.tracking_uri"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=environment, check=True,
    ).stdout.strip()  # fmt: skip
    assert store == DEFAULT_STORE.replace("sqlite:///", f"sqlite:///{tmp_path}/")
    assert (cfg.sweep.registered_model, cfg.sweep.alias) == (REGISTERED_MODEL, ALIAS)


def test_the_store_is_the_flags_else_the_environments_else_the_one_here(
    tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)  # no store, nothing kept: the error names the store looked in
    Image.new("L", (28, 28)).save("blank.png")
    monkeypatch.delenv(STORE_ENVIRONMENT, raising=False)
    assert main(["blank.png"]) == 2
    assert f"no {CHAMPION} in {DEFAULT_STORE} " in capsys.readouterr().err
    monkeypatch.setenv(STORE_ENVIRONMENT, f"sqlite:///{tmp_path}/env.db")
    assert main(["blank.png"]) == 2
    assert f"no {CHAMPION} in sqlite:///{tmp_path}/env.db " in capsys.readouterr().err
    assert main(["--tracking-uri", f"sqlite:///{tmp_path}/flag.db", "blank.png"]) == 2
    assert f"no {CHAMPION} in sqlite:///{tmp_path}/flag.db " in capsys.readouterr().err
    assert list(tmp_path.glob("*.db")) == []  # looked for, never created


@pytest.mark.slow
def test_an_mlflow_model_uri_predicts_like_the_checkpoint(
    trained_run: Path, test_digits, tmp_path, capsys, monkeypatch
) -> None:
    uri = f"sqlite:///{trained_run}/mlflow.db"
    monkeypatch.setenv(STORE_ENVIRONMENT, uri)
    [logged] = mlflow.MlflowClient(uri).search_logged_models(
        [mlflow.MlflowClient(uri).get_experiment_by_name("mnist_sweep").experiment_id]
    )
    handed_over(test_digits[0][3], np.random.default_rng(3)).save(tmp_path / "3.png")
    _, [by_uri], _ = predictions(capsys, "--model", logged.model_uri, str(tmp_path))
    _, [by_file], _ = predictions(capsys, "--model", str(trained_run / "out"), str(tmp_path))
    np.testing.assert_allclose(by_uri["probabilities"], by_file["probabilities"], rtol=1e-6)
    assert main(["--model", "models:/no_such_model@champion", str(tmp_path)]) == 2
    assert "no_such_model" in capsys.readouterr().err


@pytest.mark.slow
def test_output_cut_short_by_a_closed_pipe_ends_quietly(
    trained_run: Path, test_digits, tmp_path: Path
) -> None:
    handed_over(test_digits[0][0], np.random.default_rng(4)).save(tmp_path / "0.png")
    command = [sys.executable, "-m", "mnist_sweep.predict", "--model",
               str(trained_run / "out" / "model.pt"), str(tmp_path)]  # fmt: skip
    # The reader is gone before the first line is written (`| head -0`): every write fails.
    read_end, write_end = os.pipe()
    os.close(read_end)
    predict = subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, timeout=300)
    os.close(write_end)
    assert predict.returncode == 0
    assert predict.stderr.decode().startswith("model: ")
    assert "Traceback" not in predict.stderr.decode()
