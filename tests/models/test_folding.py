"""BatchNorms folded into convolutions: the same function (outputs and input gradients), the names kept, the
unsafe folds refused, and the layers that folding changes guarded."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from pipeline.baselines.cam import find_layer
from pipeline.errors import UserError
from pipeline.models.classifiers import Classifier
from pipeline.models.folding import FoldedNorm, fold_batch_norms, is_folded
from pipeline.models.randomisation import randomisable
from tests.toy_models import TOY_PREPROCESSING


def with_statistics(network: nn.Module) -> nn.Module:
    """Random running statistics and affine parameters, so that every fold changes the weights."""
    generator = torch.Generator().manual_seed(1)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator))
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(size, generator=generator))
            module.bias.data.copy_(torch.randn(size, generator=generator))
    return network.eval().requires_grad_(False)


def network() -> nn.Module:
    return with_statistics(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),  # has a bias of its own
            BatchNormAct2d(8, act_layer=nn.ReLU6),  # timm's norm + activation in one module
            nn.BatchNorm2d(8),  # follows a BatchNorm, not a convolution: stays
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 5),
        )
    )


class Residual(nn.Module):
    """A convolution whose output feeds its BatchNorm and a skip connection: folding it would change the sum."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.conv(images)
        return self.norm(features) + features


def test_folding_keeps_the_function_and_the_names():
    original = network()
    folded = copy.deepcopy(original)
    images = torch.rand(4, 3, 16, 16)
    assert fold_batch_norms(folded, images) == 2
    assert [type(module) for module in folded] == [
        nn.Conv2d, FoldedNorm, nn.ReLU, nn.Conv2d, FoldedNorm, nn.BatchNorm2d, nn.AdaptiveAvgPool2d, nn.Flatten,
        nn.Linear,
    ]  # fmt: skip
    assert isinstance(folded[4].after[1], nn.ReLU6)  # the activation of timm's module survives
    fresh = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(folded(fresh), original(fresh), rtol=1e-5, atol=1e-5)
    gradients = []
    for model in (original, folded):
        inputs = fresh.clone().requires_grad_(True)
        model(inputs).logsumexp(1).sum().backward()
        gradients.append(inputs.grad)
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-4, atol=1e-6)
    assert is_folded(folded) and not is_folded(original)


def test_a_fold_that_changes_the_outputs_is_undone():
    model = with_statistics(Residual())
    weight = model.conv.weight.clone()
    assert fold_batch_norms(model, torch.rand(2, 3, 8, 8)) == 0
    assert isinstance(model.norm, nn.BatchNorm2d) and torch.equal(model.conv.weight, weight)


def test_folded_networks_refuse_what_folding_changes():
    folded = network()
    fold_batch_norms(folded, torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="folded BatchNorms cannot be randomised"):
        with randomisable(folded, "tests.toy_models:tiny_classifier", seed=0):
            pass
    classifier = Classifier("toy", folded, TOY_PREPROCESSING)
    with pytest.raises(UserError, match=r"layer '3' .* BatchNorm '4' folded into it.*--target-layer 4"):
        find_layer(classifier, "3")
    assert find_layer(classifier, "4") is folded[4]
