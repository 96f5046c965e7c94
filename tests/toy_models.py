"""Tiny random networks for fast tests, loadable by name as ``tests.toy_models:<factory>``."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.classifiers import Preprocessing

TOY_PREPROCESSING = Preprocessing(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


class TinyClassifier(nn.Module):
    """Two strided convs, global pooling (max, or average as a ``pool`` module), a linear layer: 32x32 images,
    ``num_classes`` logits."""

    preprocessing = TOY_PREPROCESSING

    def __init__(self, num_classes: int = 10, pooling: str = "max"):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)
        self.pool = nn.AdaptiveAvgPool2d(1) if pooling == "average" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        return self.fc(features.amax(dim=(2, 3)) if self.pool is None else self.pool(features).flatten(1))


class TinyFeatures(nn.Module):
    """A three-stage CNN with named stages at strides 1, 2 and 4."""

    preprocessing = TOY_PREPROCESSING

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())
        self.stage3 = nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage3(self.stage2(self.stage1(x)))


def tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    return TinyClassifier()


def tiny_features() -> nn.Module:
    torch.manual_seed(1)
    return TinyFeatures()


TOY_MODEL = {"backbone": "tests.toy_models:tiny_classifier", "auxiliary": "tests.toy_models:tiny_features",
             "auxiliary_layers": ["stage1", "stage2", "stage3"]}


def tiny_vit() -> nn.Module:
    """A two-layer torchvision ViT on 32x32 images (4x4 patches of 8 px, a class token, 10 classes); its head is
    drawn at random (torchvision initialises it to zeros, which would make every gradient zero)."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(2)
    network = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                                num_classes=10)
    nn.init.normal_(network.heads.head.weight, std=0.5)
    network.preprocessing = TOY_PREPROCESSING
    return network


def tiny_resnet() -> nn.Module:
    """A one-block-per-stage torchvision ResNet (BasicBlock, 10 classes) on 64x64 images: resnet50's module
    names (``maxpool``, ``layer1..4``, ``avgpool``, ``fc``) at a fraction of the cost. Its BatchNorm statistics
    are drawn at random, so that they differ from the defaults a training step would move them towards."""
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(3)
    network = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            nn.init.normal_(module.weight, 1.0, 0.2)
    network.preprocessing = Preprocessing(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return network


TINY_RESNET_STREAM = {"points": ["maxpool", "layer1", "layer2", "layer3"], "pool": "avgpool"}
