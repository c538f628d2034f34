from __future__ import annotations

import pytest
import torch

from mnist_sweep.models import CNN, MLP, Classifier, Ensemble, ShiftTTA, rebuild


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


CNN_KNOBS = {"channels": [8, 16], "kernel_size": 5, "hidden_sizes": [32], "dropout": 0.1}


@pytest.mark.parametrize("shape", [(4, 784), (4, 1, 28, 28)])
def test_cnn_returns_probabilities_for_flat_and_square_images(shape) -> None:
    torch.manual_seed(0)
    model = CNN(**CNN_KNOBS).eval()
    x = torch.randn(shape)
    probabilities = model(x)
    assert probabilities.shape == (4, 10)
    torch.testing.assert_close(probabilities, model.logits(x).softmax(1))
    torch.testing.assert_close(probabilities.sum(1), torch.ones(4))


def test_cnn_stages_follow_the_configured_channels() -> None:
    model = CNN([8, 16, 32], convs_per_stage=2, kernel_size=3)
    convs = [(m.in_channels, m.out_channels, m.kernel_size) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d)]  # fmt: skip
    assert convs == [(1, 8, (3, 3)), (8, 8, (3, 3)), (8, 16, (3, 3)), (16, 16, (3, 3)),
                     (16, 32, (3, 3)), (32, 32, (3, 3))]  # fmt: skip
    [head] = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert head.in_features == 32 * 3 * 3  # 28 -> 14 -> 7 -> 3


def test_more_stages_than_the_image_can_pool_are_refused() -> None:
    with pytest.raises(ValueError, match="to nothing"):
        CNN([4, 4, 4, 4, 4])


@pytest.mark.parametrize("net", [MLP([32, 16], 0.1), CNN(**CNN_KNOBS)])
def test_rebuild_from_hparams_gives_the_same_network(net) -> None:
    copy = rebuild(net.hparams)
    copy.load_state_dict(net.state_dict())
    x = torch.randn(3, 784)
    torch.testing.assert_close(copy.eval()(x), net.eval()(x))


def test_hparams_without_arch_are_an_mlp() -> None:
    """Checkpoints from before the CNN stored no architecture."""
    assert isinstance(rebuild({"hidden_sizes": [32, 16], "dropout": 0.0}), MLP)


def test_ensemble_averages_its_members_probabilities() -> None:
    members = [MLP([16, 8]).eval(), MLP([32, 8]).eval()]
    x = torch.randn(5, 784)
    torch.testing.assert_close(Ensemble(members)(x), (members[0](x) + members[1](x)) / 2)


def test_shift_tta_averages_the_image_and_its_four_one_pixel_shifts() -> None:
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 10, 10] = 1.0
    views = ShiftTTA(torch.nn.Identity()).views(image)
    lit = sorted(tuple(view[0, 0].nonzero()[0].tolist()) for view in views)
    assert lit == [(9, 10), (10, 9), (10, 10), (10, 11), (11, 10)]
    classifier = MLP([16, 8]).eval()
    expected = torch.stack([classifier(view) for view in views]).mean(0)
    torch.testing.assert_close(ShiftTTA(classifier)(image), expected)
