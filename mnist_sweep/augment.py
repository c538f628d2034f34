"""Training-time distortions: a random affine map and an elastic field per image, applied to a
whole batch on its device by one grid_sample call."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mnist_sweep.config import AugmentConfig
from mnist_sweep.models import IMAGE_SIDE


class BatchAugment:
    """Callable on a batch of normalized images (N, 784) or (N, 1, 28, 28); same shape out.

    Draws from its own seeded generator, so switching augmentation on leaves the shuffling and
    weight initialization of a seed unchanged.
    """

    def __init__(self, config: AugmentConfig, device: torch.device, seed: int) -> None:
        self.config = config
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.smoothing = _gaussian_kernel(config.elastic_sigma, device)

    def _uniform(self, n: int, limit: float, like: torch.Tensor) -> torch.Tensor:
        """n draws from U(-limit, limit)."""
        draws = torch.rand(n, generator=self.generator, device=like.device, dtype=like.dtype)
        return (2 * draws - 1) * limit

    def affine(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image 2x3 matrices mapping output to input coordinates, in [-1, 1] units."""
        n, c = len(images), self.config
        angle = torch.deg2rad(self._uniform(n, c.rotation, images))
        shear = torch.deg2rad(self._uniform(n, c.shear, images))
        zoom = 1 + self._uniform(n, c.scale, images)
        shift = [2 * self._uniform(n, c.translate, images) for _ in range(2)]
        cos, sin, tan = angle.cos(), angle.sin(), shear.tan()
        # rotation @ shear (x += tan * y) / zoom; the distributions are symmetric, so sampling
        # with the matrix instead of its inverse draws from the same family of distortions.
        row_x = torch.stack([cos, cos * tan - sin, shift[0]], dim=1)
        row_y = torch.stack([sin, sin * tan + cos, shift[1]], dim=1)
        theta = torch.stack([row_x, row_y], dim=1)
        theta[:, :, :2] /= zoom.view(n, 1, 1)
        return theta

    def elastic(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image smooth displacement fields (N, 28, 28, 2) in grid units."""
        n = len(images)
        noise = torch.rand((n * 2, 1, IMAGE_SIDE, IMAGE_SIDE), generator=self.generator,
                           device=images.device, dtype=images.dtype) * 2 - 1  # fmt: skip
        kernel = self.smoothing.to(images.dtype)
        pad = len(kernel) // 2
        field = F.conv2d(noise, kernel.view(1, 1, -1, 1), padding=(pad, 0))
        field = F.conv2d(field, kernel.view(1, 1, 1, -1), padding=(0, pad))
        field = field.view(n, 2, IMAGE_SIDE, IMAGE_SIDE).permute(0, 2, 3, 1)
        pixels_to_grid = 2 / IMAGE_SIDE
        return field * (self.config.elastic_alpha * pixels_to_grid)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        square = images.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
        grid = F.affine_grid(self.affine(square), list(square.shape), align_corners=False)
        if self.config.elastic_alpha > 0:
            grid = grid + self.elastic(square)
        # Border padding repeats the edge pixels, which are background in every MNIST-format
        # image, whatever the normalization maps background to.
        moved = F.grid_sample(square, grid, padding_mode="border", align_corners=False)
        return moved.reshape(images.shape)


def _gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    radius = max(1, math.ceil(2 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def make_augment(config: AugmentConfig, device: torch.device, seed: int) -> BatchAugment | None:
    """The batch distortion that `data.augment` describes, or None when it is all zeros."""
    return BatchAugment(config, device, seed) if config.enabled else None
