"""Batch augmentation: per-image random distortions that keep images looking like images."""

from __future__ import annotations

import pytest
import torch

from mnist_sweep.augment import BatchAugment, make_augment
from mnist_sweep.config import AugmentConfig

CPU = torch.device("cpu")
BACKGROUND = -0.1307 / 0.3081  # a 0 pixel after MNIST normalization
AFFINE = AugmentConfig(rotation=10, translate=0.1, scale=0.1, shear=10)


def digit_like(n: int = 8) -> torch.Tensor:
    """Normalized (n, 1, 28, 28) images: a bright bar on background, away from the border."""
    images = torch.full((n, 1, 28, 28), BACKGROUND)
    images[:, :, 8:20, 12:16] = (1 - 0.1307) / 0.3081
    return images


def centre_of_mass(images: torch.Tensor) -> torch.Tensor:
    ink = (images - BACKGROUND).clamp_min(0).squeeze(1)
    coords = torch.arange(28, dtype=ink.dtype)
    total = ink.sum((1, 2))
    return torch.stack([(ink.sum(2) * coords).sum(1) / total, (ink.sum(1) * coords).sum(1) / total])


def test_all_zeros_is_no_augmentation() -> None:
    assert make_augment(AugmentConfig(), CPU, 0) is None
    assert isinstance(make_augment(AugmentConfig(elastic_alpha=1.0), CPU, 0), BatchAugment)


@pytest.mark.parametrize("shape", [(8, 784), (8, 1, 28, 28)])
def test_keeps_the_batch_shape_the_loader_gives(shape) -> None:
    images = digit_like().reshape(shape)
    assert BatchAugment(AFFINE, CPU, 0)(images).shape == images.shape


def test_same_seed_same_distortions_other_seed_others() -> None:
    images = digit_like()
    first = BatchAugment(AFFINE, CPU, 0)(images)
    torch.testing.assert_close(BatchAugment(AFFINE, CPU, 0)(images), first)
    assert not torch.allclose(BatchAugment(AFFINE, CPU, 1)(images), first)


def test_every_image_of_a_batch_gets_its_own_distortion() -> None:
    out = BatchAugment(AFFINE, CPU, 0)(digit_like(16)).flatten(1)
    assert len({tuple(row.tolist()) for row in out}) == 16


def test_translation_moves_the_ink_by_at_most_the_configured_fraction() -> None:
    images = digit_like(64)
    moved = BatchAugment(AugmentConfig(translate=0.1), CPU, 0)(images)
    shift = (centre_of_mass(moved) - centre_of_mass(images)).abs()
    assert shift.max() <= 0.1 * 28 + 0.5
    assert shift.max() > 1.0  # it did move some images by more than a pixel


def test_rotation_keeps_the_amount_of_ink_and_the_background() -> None:
    images = digit_like(32)
    rotated = BatchAugment(AugmentConfig(rotation=30), CPU, 0)(images)
    ink = (rotated - BACKGROUND).sum((1, 2, 3)) / (images - BACKGROUND).sum((1, 2, 3))
    assert ((ink - 1).abs() < 0.05).all()
    # Border padding: what comes in from outside the image is background, not normalized zero.
    top_row = rotated[:, :, 0, :]
    torch.testing.assert_close(top_row, torch.full_like(top_row, BACKGROUND))


def test_elastic_distortion_changes_pixels_within_the_input_range() -> None:
    images = digit_like()
    config = AugmentConfig(elastic_alpha=34.0, elastic_sigma=4.0)
    out = BatchAugment(config, CPU, 0)(images)
    assert not torch.allclose(out, images)
    # Bilinear sampling mixes input pixels; it never invents values outside their range.
    assert out.min() >= images.min() - 1e-5 and out.max() <= images.max() + 1e-5
