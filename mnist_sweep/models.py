"""The classifiers (an MLP and a CNN over normalized images) and their inference wrappers:
normalization, ensembles, test-time augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnist_sweep.config import Architecture, ModelConfig

IMAGE_SIDE = 28
INPUT_SIZE = IMAGE_SIDE * IMAGE_SIDE
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
        # What checkpoints store to rebuild this network: rebuild(net.hparams).
        self.hparams = {"arch": "mlp", "hidden_sizes": list(hidden_sizes), "dropout": dropout,
                        "input_size": input_size, "num_classes": num_classes}  # fmt: skip
        if len(hidden_sizes) < 2:
            raise ValueError(f"an MLP here has at least two hidden layers, got {hidden_sizes}")
        self.layers = nn.Sequential(*fully_connected(input_size, hidden_sizes, dropout,
                                                     num_classes))  # fmt: skip

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalized scores: what the loss is computed from."""
        return self.layers(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).softmax(dim=1)


def fully_connected(
    width_in: int, hidden_sizes: list[int], dropout: float, num_classes: int
) -> list[nn.Module]:
    """(Linear, ReLU, Dropout) per hidden size, then the Linear layer to the class scores."""
    layers: list[nn.Module] = []
    for width_out in hidden_sizes:
        layers += [nn.Linear(width_in, width_out), nn.ReLU(), nn.Dropout(dropout)]
        width_in = width_out
    return [*layers, nn.Linear(width_in, num_classes)]


class CNN(nn.Module):
    """Stages of (conv, batch norm, ReLU) x `convs_per_stage`, each ending in a 2x2 max-pool,
    then fully connected layers; `forward` returns class probabilities."""

    def __init__(
        self,
        channels: list[int],
        convs_per_stage: int = 1,
        kernel_size: int = 3,
        hidden_sizes: list[int] = (),
        dropout: float = 0.0,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        self.hparams = {"arch": "cnn", "channels": list(channels),
                        "convs_per_stage": convs_per_stage, "kernel_size": kernel_size,
                        "hidden_sizes": list(hidden_sizes), "dropout": dropout,
                        "num_classes": num_classes}  # fmt: skip
        layers: list[nn.Module] = []
        width_in, side = 1, IMAGE_SIDE
        for width_out in channels:
            for _ in range(convs_per_stage):
                layers += [
                    # No bias: batch norm's shift replaces it.
                    nn.Conv2d(width_in, width_out, kernel_size, padding=kernel_size // 2,
                              bias=False),
                    nn.BatchNorm2d(width_out),
                    nn.ReLU(),
                ]  # fmt: skip
                width_in = width_out
            layers.append(nn.MaxPool2d(2))
            side //= 2
        if side == 0:
            raise ValueError(f"{len(channels)} stages pool a {IMAGE_SIDE}-pixel image to nothing")
        layers += [nn.Flatten(), nn.Dropout(dropout)]
        layers += fully_connected(width_in * side * side, list(hidden_sizes), dropout, num_classes)
        self.layers = nn.Sequential(*layers)
        # NHWC makes the training steps 1.2-1.4x faster on the CPU (benchmarks/cnn_speed.py),
        # with the same results up to rounding.
        self.to(memory_format=torch.channels_last)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalized scores: what the loss is computed from. Accepts flattened images too."""
        images = x.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
        return self.layers(images.contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).softmax(dim=1)


Network = MLP | CNN


def build_model(config: ModelConfig) -> Network:
    """The network that `model.arch` names, sized by the rest of the model config."""
    if config.arch is Architecture.cnn:
        return CNN(config.channels, config.convs_per_stage, config.kernel_size,
                   config.hidden_sizes, config.dropout)  # fmt: skip
    return MLP(config.hidden_sizes, config.dropout)


def rebuild(hparams: dict) -> Network:
    """The untrained network that a checkpoint's `model_config` (a net's `hparams`) describes."""
    # Checkpoints written before the CNN existed have no "arch": they are MLPs.
    options = dict(hparams)
    arch = options.pop("arch", "mlp")
    return CNN(**options) if arch == "cnn" else MLP(**options)


class Classifier(nn.Module):
    """Images in [0, 1] of shape (N, 1, 28, 28) to (N, 10) probabilities, normalization included."""

    def __init__(self, net: Network, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)


class Ensemble(nn.Module):
    """The mean of several classifiers' probabilities."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(images) for member in self.members]).mean(0)


class ShiftTTA(nn.Module):
    """Test-time augmentation: the mean probabilities over the image and four copies shifted
    by `pixels` up, down, left and right (the vacated rows are background, 0)."""

    def __init__(self, classifier: nn.Module, pixels: int = 1) -> None:
        super().__init__()
        self.classifier, self.pixels = classifier, pixels

    def views(self, images: torch.Tensor) -> list[torch.Tensor]:
        p = self.pixels
        side = images.shape[-1]
        padded = F.pad(images, (p, p, p, p))
        offsets = [(p, p), (0, p), (2 * p, p), (p, 0), (p, 2 * p)]
        return [padded[..., y : y + side, x : x + side] for y, x in offsets]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.classifier(view) for view in self.views(images)]).mean(0)
