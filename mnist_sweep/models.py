"""The classifier: an MLP over normalized, flattened images, and its inference wrapper."""

from __future__ import annotations

import itertools

import torch
from torch import nn

INPUT_SIZE = 28 * 28
NUM_CLASSES = 10


class MLP(nn.Module):
    """Fully connected ReLU network; `forward` returns class probabilities."""

    def __init__(
        self,
        hidden_sizes: list[int],
        dropout: float = 0.0,
        input_size: int = INPUT_SIZE,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        # What checkpoints store to rebuild this network: MLP(**net.hparams).
        self.hparams = {"hidden_sizes": list(hidden_sizes), "dropout": dropout,
                        "input_size": input_size, "num_classes": num_classes}  # fmt: skip
        if len(hidden_sizes) < 2:
            raise ValueError(f"an MLP here has at least two hidden layers, got {hidden_sizes}")
        layers: list[nn.Module] = []
        widths = [input_size, *hidden_sizes]
        for width_in, width_out in itertools.pairwise(widths):
            layers += [nn.Linear(width_in, width_out), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalized scores: what the loss is computed from."""
        return self.layers(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).softmax(dim=1)


class Classifier(nn.Module):
    """Images in [0, 1] of shape (N, 1, 28, 28) to (N, 10) probabilities, normalization included."""

    def __init__(self, net: MLP, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)
