from __future__ import annotations

import pytest
import torch

from mnist_sweep.models import MLP, Classifier


def test_forward_returns_a_probability_distribution_per_image() -> None:
    torch.manual_seed(0)
    probabilities = MLP([32, 16]).eval()(torch.randn(8, 784) * 5)
    assert probabilities.shape == (8, 10)
    assert (probabilities >= 0).all()
    torch.testing.assert_close(probabilities.sum(1), torch.ones(8))


def test_forward_is_the_softmax_of_the_logits_the_loss_uses() -> None:
    model = MLP([32, 16]).eval()
    x = torch.randn(4, 784)
    torch.testing.assert_close(model(x), model.logits(x).softmax(1))


def test_layers_follow_the_configured_widths() -> None:
    widths = [(m.in_features, m.out_features) for m in MLP([64, 32, 16]).modules()
              if isinstance(m, torch.nn.Linear)]  # fmt: skip
    assert widths == [(784, 64), (64, 32), (32, 16), (16, 10)]


def test_fewer_than_two_hidden_layers_is_refused() -> None:
    with pytest.raises(ValueError, match="two hidden layers"):
        MLP([128])


def test_classifier_applies_the_training_normalization_to_images() -> None:
    net = MLP([32, 16]).eval()
    images = torch.rand(3, 1, 28, 28)
    probabilities = Classifier(net, mean=0.1307, std=0.3081)(images)
    torch.testing.assert_close(probabilities, net((images - 0.1307) / 0.3081))
