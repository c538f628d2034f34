from __future__ import annotations

import dataclasses
import gzip
import shutil
from pathlib import Path

import pytest
import torch

from mnist_sweep import data
from mnist_sweep.config import ConfigError, DatasetName, to_run_config
from mnist_sweep.data import (
    DATASETS,
    RAW_FILES,
    DataIntegrityError,
    DataMissingError,
    TensorBatches,
    ensure_raw_files,
    expected_digests,
)

from tests.support import FASHION_SOURCE, compose_config, needs_fashion_mnist

PACKAGED = Path(str(DATASETS[DatasetName.mnist].source))


@pytest.fixture
def source_copy(tmp_path: Path) -> Path:
    """A writable copy of the packaged .gz files, to damage."""
    folder = tmp_path / "source"
    folder.mkdir()
    for name in RAW_FILES:
        shutil.copy(PACKAGED / f"{name}.gz", folder / f"{name}.gz")
    return folder


def test_raw_files_land_where_torchvision_looks_and_are_verified(data_root: Path) -> None:
    raw = ensure_raw_files(data_root)
    assert raw == data_root / "MNIST" / "raw"
    digests = expected_digests()
    for name in RAW_FILES:
        assert data._sha256((raw / name).read_bytes()) == digests[name]


def test_corrupted_source_file_is_named_with_its_expected_digest(
    tmp_path: Path, source_copy: Path
) -> None:
    name = "train-labels-idx1-ubyte"
    raw = gzip.decompress((source_copy / f"{name}.gz").read_bytes())
    flipped = raw[:100] + bytes([raw[100] ^ 0xFF]) + raw[101:]
    (source_copy / f"{name}.gz").write_bytes(gzip.compress(flipped))
    with pytest.raises(DataIntegrityError) as error:
        ensure_raw_files(tmp_path / "root", source_copy)
    assert name in str(error.value)
    assert expected_digests()[name] in str(error.value)
    assert not (tmp_path / "root" / "MNIST" / "raw" / name).exists()


def test_truncated_source_file_is_refused(tmp_path: Path, source_copy: Path) -> None:
    name = "t10k-images-idx3-ubyte"
    path = source_copy / f"{name}.gz"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataIntegrityError, match=name) as error:
        ensure_raw_files(tmp_path / "root", source_copy)
    assert expected_digests()[name] in str(error.value)
    assert not (tmp_path / "root" / "MNIST" / "raw" / name).exists()


def test_corrupted_cached_file_is_replaced_from_the_packaged_copy(tmp_path: Path) -> None:
    raw = ensure_raw_files(tmp_path)
    target = raw / "t10k-labels-idx1-ubyte"
    target.write_bytes(b"\x00" * 100)
    ensure_raw_files(tmp_path)
    assert data._sha256(target.read_bytes()) == expected_digests()[target.name]


def test_missing_source_without_download_says_how_to_allow_it(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError, match="does not exist"):
        ensure_raw_files(tmp_path / "root", tmp_path / "empty")
    with pytest.raises(DataMissingError, match=r"data\.download=true"):
        data.torchvision_dataset(data.DataFiles(str(tmp_path / "root"), str(tmp_path)), True)


@pytest.mark.parametrize("train", [True, False])
def test_the_tensor_loader_reads_the_raw_files_as_torchvision_does(small_cfg, train) -> None:
    files = data.DataFiles.of(to_run_config(small_cfg).data)
    images, labels = data.read_split(files, train)
    reference = data.torchvision_dataset(files, train)
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert torch.equal(images, reference.data) and torch.equal(labels, reference.targets)


def test_a_file_that_is_not_idx_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(DataIntegrityError, match="not an IDX file"):
        data.read_idx(tmp_path / "bad")


def test_normalization_constants_are_the_training_set_statistics(small_cfg) -> None:
    config = to_run_config(small_cfg).data
    pixels = data.torchvision_dataset(data.DataFiles.of(config), True).data.float() / 255
    assert pixels.mean().item() == pytest.approx(config.mean, abs=1e-4)
    assert pixels.std().item() == pytest.approx(config.std, abs=1e-4)


def test_split_is_disjoint_seeded_and_sized(small_cfg) -> None:
    config = to_run_config(small_cfg).data
    config.train_subset = None
    train_idx, val_idx = data.split_indices(60_000, config)
    assert len(val_idx) == config.val_size and len(train_idx) == 60_000 - config.val_size
    assert len(set(train_idx.tolist()) | set(val_idx.tolist())) == 60_000
    again, _ = data.split_indices(60_000, config)
    assert torch.equal(train_idx, again)
    config.split_seed += 1
    assert not torch.equal(train_idx, data.split_indices(60_000, config)[0])


def test_val_size_that_leaves_nothing_to_train_on_is_an_error(small_cfg) -> None:
    config = to_run_config(small_cfg).data
    config.val_size = 60_000
    with pytest.raises(ValueError, match=r"data\.val_size"):
        data.split_indices(60_000, config)


def test_both_loaders_yield_the_same_tensors_for_the_same_images(small_cfg) -> None:
    config = to_run_config(small_cfg).data
    cpu = torch.device("cpu")
    tensor = data.tensor_loaders(config, cpu, seed=0)
    reference = data.torch_loaders(config, seed=0)
    for split in ("val", "test"):
        (x_tensor, y_tensor), (x_ref, y_ref) = (
            next(iter(getattr(tensor, split))),
            next(iter(getattr(reference, split))),
        )
        assert x_tensor.shape == x_ref.shape == (config.eval_batch_size, 784)
        assert torch.equal(y_tensor, y_ref)
        torch.testing.assert_close(x_tensor, x_ref, rtol=0, atol=1e-6)
    assert len(tensor.train) == len(reference.train)


def test_tensor_batches_cover_every_index_once_per_epoch_in_a_fresh_order() -> None:
    images = torch.arange(10.0).unsqueeze(1)
    labels = torch.arange(10)
    batches = TensorBatches(images, labels, torch.arange(10), 4, torch.Generator().manual_seed(0))
    epochs = [torch.cat([y for _, y in batches]) for _ in range(2)]
    assert len(batches) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    assert all(sorted(epoch.tolist()) == list(range(10)) for epoch in epochs)
    assert not torch.equal(epochs[0], epochs[1])
    replay = TensorBatches(images, labels, torch.arange(10), 4, torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat([y for _, y in replay]), epochs[0])


def test_drop_last_drops_the_partial_batch() -> None:
    batches = TensorBatches(torch.zeros(10, 1), torch.zeros(10), torch.arange(10), 4, None, True)
    assert len(batches) == 2 and [len(y) for _, y in batches] == [4, 4]


@needs_fashion_mnist
def test_fashion_mnist_files_are_verified_into_torchvisions_folder(tmp_path: Path) -> None:
    raw = ensure_raw_files(tmp_path, FASHION_SOURCE, DatasetName.fashion_mnist)
    assert raw == tmp_path / "FashionMNIST" / "raw"
    digests = expected_digests(DatasetName.fashion_mnist)
    assert digests != expected_digests(DatasetName.mnist)
    for name in RAW_FILES:
        assert data._sha256((raw / name).read_bytes()) == digests[name]


@needs_fashion_mnist
def test_fashion_mnist_statistics_and_classes_are_its_own(tmp_path: Path) -> None:
    config = to_run_config(compose_config(["data=fashion_mnist", f"data.root={tmp_path}",
                                           "mlflow.tracking_uri=sqlite:///x.db"])).data  # fmt: skip
    dataset = data.torchvision_dataset(data.DataFiles.of(config), True)
    pixels = dataset.data.float() / 255
    assert pixels.mean().item() == pytest.approx(config.mean, abs=1e-4)
    assert pixels.std().item() == pytest.approx(config.std, abs=1e-4)
    assert data.class_names(config.name) == dataset.classes
    assert torch.bincount(dataset.targets).tolist() == [6000] * 10


@needs_fashion_mnist
def test_a_damaged_fashion_mnist_file_is_refused_by_name(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(FASHION_SOURCE, source)
    name = "t10k-labels-idx1-ubyte"
    raw = gzip.decompress((source / f"{name}.gz").read_bytes())
    (source / f"{name}.gz").write_bytes(gzip.compress(raw[:-1] + bytes([(raw[-1] + 1) % 10])))
    with pytest.raises(DataIntegrityError, match=name) as error:
        ensure_raw_files(tmp_path / "root", source, DatasetName.fashion_mnist)
    assert expected_digests(DatasetName.fashion_mnist)[name] in str(error.value)


def test_missing_fashion_mnist_files_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError, match="apt-get install dataset-fashion-mnist") as error:
        ensure_raw_files(tmp_path, tmp_path / "nowhere", DatasetName.fashion_mnist)
    assert str(tmp_path / "nowhere" / "train-images-idx3-ubyte.gz") in str(error.value)


def test_a_missing_optional_dataset_is_a_config_error_naming_its_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = DATASETS[DatasetName.fashion_mnist]
    monkeypatch.setitem(DATASETS, DatasetName.fashion_mnist,
                        dataclasses.replace(spec, source=tmp_path / "absent"))  # fmt: skip
    config = to_run_config(compose_config(["data=fashion_mnist", f"data.root={tmp_path}/root",
                                           "mlflow.tracking_uri=sqlite:///x.db"])).data  # fmt: skip
    with pytest.raises(ConfigError) as error:
        data.check_available(config)
    assert str(error.value).startswith(
        f"data=fashion_mnist: {tmp_path}/absent/train-images-idx3-ubyte.gz does not exist "
        "(apt-get install dataset-fashion-mnist, "
    )
    config.download = True  # torchvision may fetch it
    data.check_available(config)


def test_extracted_files_need_no_source(tmp_path: Path) -> None:
    config = to_run_config(compose_config([f"data.root={tmp_path}", "data.source_dir=/nonexistent",
                                           "mlflow.tracking_uri=sqlite:///x.db"])).data  # fmt: skip
    with pytest.raises(ConfigError, match=r"^data\.source_dir=/nonexistent: "):
        data.check_available(config)
    ensure_raw_files(tmp_path)  # from the packaged copy
    data.check_available(config)
