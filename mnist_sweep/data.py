"""MNIST-format datasets on disk and in memory: verified raw files, splits, and the two batch
loaders."""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Subset

from mnist_sweep.config import ConfigError, DataConfig, DatasetName, Loader

if TYPE_CHECKING:
    from torchvision import datasets, transforms

log = logging.getLogger(__name__)

CLASS_NAMES = [str(digit) for digit in range(10)]
IMAGE_SHAPE = (1, 28, 28)
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_PACKAGE = resources.files("mnist_sweep")


@dataclass(frozen=True)
class DatasetSpec:
    """How one MNIST-format dataset is found, checked and read."""

    # torchvision's dataset class, which reads <root>/<folder>/raw; imported only by the torch
    # loader, the tensor loader reads the raw files itself (torchvision takes seconds to import)
    folder: str
    checksums: Traversable  # SHA256SUMS of the four decompressed files
    source: Traversable | Path  # the .gz originals when data.source_dir is null
    class_names: tuple[str, ...]
    how_to_get: str  # said when the originals are missing


DATASETS = {
    DatasetName.mnist: DatasetSpec(
        "MNIST", _PACKAGE / "mnist_files" / "SHA256SUMS",
        _PACKAGE / "mnist_files", tuple(CLASS_NAMES),
        "the package ships them; reinstall mnist_sweep"),
    DatasetName.fashion_mnist: DatasetSpec(
        "FashionMNIST", _PACKAGE / "fashion_mnist_files" / "SHA256SUMS",
        Path("/usr/share/datasets/fashion-mnist"), ("T-shirt/top", "Trouser", "Pullover",
        "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        "apt-get install dataset-fashion-mnist, or point data.source_dir at the four .gz files"),
}  # fmt: skip


def class_names(dataset: DatasetName) -> list[str]:
    return list(DATASETS[dataset].class_names)


class DataIntegrityError(RuntimeError):
    """A data file whose content is not the one its digest promises."""


class DataMissingError(FileNotFoundError):
    """No local copy of a raw file, and downloading is switched off."""


def default_data_root() -> Path:
    """Where extracted datasets live when `data.root` is null: a per-user cache."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mnist_sweep"


def expected_digests(dataset: DatasetName = DatasetName.mnist) -> dict[str, str]:
    """SHA-256 of each decompressed raw file, as shipped in the dataset's SHA256SUMS."""
    lines = DATASETS[dataset].checksums.read_text().split("\n")
    return {name: digest for digest, name in (line.split() for line in lines if line.strip())}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check(data: bytes, name: str, expected: str, source: object) -> None:
    actual = _sha256(data)
    if actual != expected:
        raise DataIntegrityError(
            f"{source}: SHA-256 of {name} is {actual}, expected {expected}; "
            "the file is corrupted, truncated or not the original, and was not used"
        )


def _read_source(source: Path, name: str, expected: str) -> bytes:
    try:
        data = gzip.decompress(source.read_bytes())
    except (OSError, EOFError) as error:
        raise DataIntegrityError(
            f"{source}: cannot decompress {name} ({error}); expected SHA-256 {expected}; "
            "the file was not used"
        ) from error
    _check(data, name, expected, source)
    return data


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def ensure_raw_files(
    root: Path, source_dir: Path | None = None, dataset: DatasetName = DatasetName.mnist
) -> Path:
    """Put verified raw IDX files in `root/<folder>/raw`, where torchvision looks; returns that
    folder.

    A cached file that fails its digest is replaced from the source copy (`source_dir`, else
    the dataset's usual place); a source file that fails raises DataIntegrityError naming it
    and the expected digest.
    """
    spec = DATASETS[dataset]
    raw_dir = root / spec.folder / "raw"
    digests = expected_digests(dataset)
    for name in RAW_FILES:
        target = raw_dir / name
        if target.exists():
            if _sha256(target.read_bytes()) == digests[name]:
                continue
            log.warning("%s fails its SHA-256 check; replacing it from the source copy", target)
        source = Path(str(source_dir or spec.source)) / f"{name}.gz"
        if not source.exists():
            raise DataMissingError(
                f"no local copy of {name}: {source} does not exist ({spec.how_to_get})"
            )
        _write_atomically(target, _read_source(source, name, digests[name]))
    return raw_dir


def check_available(config: DataConfig) -> None:
    """ConfigError naming how to get the dataset unless each raw file is extracted under
    data.root or its original is in the source folder (or data.download lets torchvision fetch
    it): one line before a run records anything, instead of a failed run and two tracebacks.
    Only looks for the files; ensure_raw_files verifies them when the run reads them."""
    spec = DATASETS[config.name]
    raw_dir = (Path(config.root) if config.root else default_data_root()) / spec.folder / "raw"
    source = Path(str(config.source_dir or spec.source))
    found = [(raw_dir / name).exists() or (source / f"{name}.gz").exists() for name in RAW_FILES]
    if config.download or all(found):
        return
    missing = RAW_FILES[found.index(False)]
    key = f"data.source_dir={config.source_dir}" if config.source_dir else f"data={config.name}"
    raise ConfigError(
        f"{key}: {source / missing}.gz does not exist ({spec.how_to_get}; or "
        "data.download=true to let torchvision fetch it)"
    )


@dataclass(frozen=True)
class DataFiles:
    """Where a dataset's files are: extracted under `root`, originals in `source_dir`."""

    root: str | None = None
    source_dir: str | None = None
    download: bool = False
    dataset: DatasetName = DatasetName.mnist

    @classmethod
    def of(cls, config: DataConfig) -> DataFiles:
        return cls(config.root, config.source_dir, config.download, config.name)


def local_raw_dir(files: DataFiles) -> Path:
    """The folder of the dataset's verified raw files (downloaded by torchvision if allowed)."""
    folder = Path(files.root) if files.root else default_data_root()
    source_dir = Path(files.source_dir) if files.source_dir else None
    try:
        return ensure_raw_files(folder, source_dir, files.dataset)
    except DataMissingError as error:
        if not files.download:
            raise DataMissingError(
                f"{error}; set data.download=true to let torchvision fetch it"
            ) from error
        log.warning("%s; downloading with torchvision", error)
    from torchvision import datasets

    getattr(datasets, DATASETS[files.dataset].folder)(folder, download=True)
    return folder / DATASETS[files.dataset].folder / "raw"


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file of unsigned bytes (the MNIST format) as a uint8 tensor of its shape."""
    data = path.read_bytes()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise DataIntegrityError(f"{path}: not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).view(shape)


def read_split(files: DataFiles, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's images (N, 28, 28) as uint8 and its labels as int64, as torchvision reads them."""
    raw_dir = local_raw_dir(files)
    prefix = "train" if train else "t10k"
    images = read_idx(raw_dir / f"{prefix}-images-idx3-ubyte")
    return images, read_idx(raw_dir / f"{prefix}-labels-idx1-ubyte").long()


def torchvision_dataset(
    files: DataFiles, train: bool, transform: transforms.Compose | None = None
) -> datasets.MNIST:
    """The torchvision dataset over verified local files (downloads only if allowed)."""
    from torchvision import datasets

    raw_dir = local_raw_dir(files)
    dataset_class = getattr(datasets, DATASETS[files.dataset].folder)
    return dataset_class(raw_dir.parent.parent, train=train, transform=transform)


def seed_transform(config: DataConfig) -> transforms.Compose:
    """The seed project's per-image pipeline: ToTensor, Normalize, flatten for the MLP."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.ToTensor(),
            transforms.Normalize((config.mean,), (config.std,)),
            transforms.Lambda(torch.flatten),
        ]
    )


def split_indices(n_train: int, config: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of the training images into (train, validation) index tensors."""
    if config.val_size >= n_train:
        raise ValueError(f"data.val_size={config.val_size} leaves no training images")
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(config.split_seed))
    train_idx, val_idx = order[config.val_size :], order[: config.val_size]
    if config.train_subset is not None:
        train_idx = train_idx[: config.train_subset]
    return train_idx, val_idx


@dataclass
class Loaders:
    train: TensorBatches | DataLoader
    val: TensorBatches | DataLoader
    test: TensorBatches | DataLoader
    train_size: int  # images in one training epoch


class TensorBatches:
    """Batches sliced from tensors on the device; a fresh seeded permutation per shuffled pass."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        batch_size: int,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> None:
        self.images, self.labels = images, labels
        self.indices = indices.to(images.device)
        self.batch_size, self.generator, self.drop_last = batch_size, generator, drop_last

    def __len__(self) -> int:
        full, rest = divmod(len(self.indices), self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices
        if self.generator is not None:
            perm = torch.randperm(len(order), generator=self.generator).to(order.device)
            order = order[perm]
        for batch in range(len(self)):
            idx = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield self.images[idx], self.labels[idx]


def normalized_tensors(
    config: DataConfig, train: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as normalized, flattened float32 on `device`; loaded once per process."""
    # Keyed on what changes the tensors only, so every run of a sweep shares one copy.
    return _normalized_tensors(DataFiles.of(config), config.mean, config.std, train, device)


@functools.lru_cache(maxsize=4)
def _normalized_tensors(
    files: DataFiles, mean: float, std: float, train: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    raw_images, labels = read_split(files, train)
    images = raw_images.to(device).flatten(1).float().div_(255)
    images.sub_(mean).div_(std)
    return images, labels.to(device)


def tensor_loaders(config: DataConfig, device: torch.device, seed: int) -> Loaders:
    """The default loader: every split resident on the device as one tensor."""
    train_images, train_labels = normalized_tensors(config, True, device)
    test_images, test_labels = normalized_tensors(config, False, device)
    train_idx, val_idx = split_indices(len(train_labels), config)
    shuffle = torch.Generator().manual_seed(seed)
    return Loaders(
        train=TensorBatches(
            train_images, train_labels, train_idx, config.batch_size, shuffle, config.drop_last
        ),
        val=TensorBatches(train_images, train_labels, val_idx, config.eval_batch_size),
        test=TensorBatches(
            test_images, test_labels, torch.arange(len(test_labels)), config.eval_batch_size
        ),
        train_size=len(train_idx),
    )


def torch_loaders(config: DataConfig, seed: int) -> Loaders:
    """The seed project's reference path: torchvision transforms behind a DataLoader."""
    transform = seed_transform(config)
    train_set = torchvision_dataset(DataFiles.of(config), True, transform)
    test_set = torchvision_dataset(DataFiles.of(config), False, transform)
    train_idx, val_idx = split_indices(len(train_set), config)
    return Loaders(
        train=DataLoader(
            Subset(train_set, train_idx.tolist()),
            batch_size=config.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            drop_last=config.drop_last,
        ),
        val=DataLoader(Subset(train_set, val_idx.tolist()), batch_size=config.eval_batch_size),
        test=DataLoader(test_set, batch_size=config.eval_batch_size),
        train_size=len(train_idx),
    )


def make_loaders(config: DataConfig, device: torch.device, seed: int) -> Loaders:
    """Train/validation/test batches with the loader that `data.loader` names."""
    if config.loader is Loader.torch:
        return torch_loaders(config, seed)
    return tensor_loaders(config, device, seed)
