"""Tiny random networks for fast tests, loadable by name as ``tests.toy_models:<factory>``, and the toy
experiment configs and image folders the tests train them on (one set, shared by every test module); also the
synthetic task with known evidence and its trained backbone, and a classifier with a closed-form output, which
tests in several folders share."""

from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from pipeline.models.classifiers import Preprocessing

TOY_PREPROCESSING = Preprocessing(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


class TinyClassifier(nn.Module):
    """Two strided convs, global pooling (max, or average as a ``pool`` module), a linear layer: 32x32 images,
    ``num_classes`` logits."""

    preprocessing = TOY_PREPROCESSING

    def __init__(self, num_classes: int = 10, pooling: str = "max"):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.ReLU(),
        )
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


TOY_MODEL = {
    "backbone": "tests.toy_models:tiny_classifier",
    "auxiliary": "tests.toy_models:tiny_features",
    "auxiliary_layers": ["stage1", "stage2", "stage3"],
}

# A training step's masked forward pass of `slow_tiny_classifier` waits this long (a toy trial of 8 images
# is one step).
SLOW_STEP_S = 3.0


class SlowTinyClassifier(TinyClassifier):
    """The tiny classifier, but a forward pass that builds a graph (the masked pass of a training step) first
    waits ``SLOW_STEP_S``: trials that last seconds without using the CPU, for tests that need trials in flight
    at a chosen moment. Evaluation (no graph) runs at full speed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            time.sleep(SLOW_STEP_S)
        return super().forward(x)


def slow_tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    return SlowTinyClassifier()


HANG_S = 120.0


class HangingTinyClassifier(TinyClassifier):
    """The tiny classifier, but the ``$TOY_HANG_AT``-th evaluation that follows training steps (counted from 1 in
    this process: a checkpoint or a trial's final scoring) first touches the file ``$TOY_HANG_FILE`` and sleeps
    ``HANG_S``: a test kills the search there, in the middle of that evaluation. Without the variables it never
    hangs."""

    def __init__(self) -> None:
        super().__init__()
        self.trained_since_evaluation = False
        self.evaluations = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.trained_since_evaluation = True
        elif torch.is_inference_mode_enabled() and self.trained_since_evaluation:
            self.trained_since_evaluation = False
            self.evaluations += 1
            if str(self.evaluations) == os.environ.get("TOY_HANG_AT"):
                Path(os.environ["TOY_HANG_FILE"]).touch()
                time.sleep(HANG_S)
        return super().forward(x)


def hanging_tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    return HangingTinyClassifier()


def write_images(root: Path, count: int = 8) -> Path:
    """``count`` random 36 x 36 PNGs in two class folders ``a`` and ``b`` (an ImageFolder; ``a`` gets the odd one)."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for label, images in (("a", (count + 1) // 2), ("b", count // 2)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(images):
            Image.fromarray((torch.rand(36, 36, 3, generator=generator) * 255).byte().numpy()).save(
                root / label / f"{i}.png"
            )
    return root


# The split of a `write_images` folder of 8 (or 3) images under this seed and share: one validation image, one test
# image, the rest for training (each file's split is a hash of its path and the seed).
TOY_SPLIT = {"seed": 1, "holdout": 0.3}


def toy_base(images: Path, model: dict | None = None) -> dict:
    """A search's base experiment: the toy models (or ``model``) on the image folder ``images``."""
    return {
        "name": "toy",
        "model": copy.deepcopy(model or TOY_MODEL),
        "data": {"dataset": "folder", "root": str(images), **TOY_SPLIT},
        "train": {"batch_size": 4, "max_lr": 0.01},
        "evaluation": {"percentages": [20, 50, 80]},
    }


def toy_experiment(tmp_path: Path, images: Path, **loss) -> Path:
    """``tmp_path/toy.yaml``: a training experiment on the toy models with fixed loss weights (``loss`` changes
    them)."""
    values = {
        "name": "toy",
        "model": copy.deepcopy(TOY_MODEL),
        "data": {"dataset": "folder", "root": str(images), **TOY_SPLIT},
        "loss": {"lambda1": 0.5, "lambda2": 0.3, "lambda_area": 1.0, **loss},
        "train": {"batch_size": 4, "max_lr": 0.01},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def tiny_vit() -> nn.Module:
    """A two-layer torchvision ViT on 32x32 images (4x4 patches of 8 px, a class token, 10 classes); its head is
    drawn at random (torchvision initialises it to zeros, which would make every gradient zero)."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(2)
    network = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    )
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


# The synthetic task with known evidence (a coloured square at a random place): the learning tests train on it, and
# RISE's test maps its trained backbone.
SIZE, OBJECT = 32, 8
COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0], [1.0, 1.0, 0.1]])


def synthetic_batch(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grey noise with one coloured square at a random place; the colour is the class."""
    images = 0.35 + 0.15 * torch.rand(count, 3, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, len(COLOURS), (count,), generator=generator)
    where = torch.zeros(count, SIZE, SIZE, dtype=torch.bool)
    corners = torch.randint(0, SIZE - OBJECT + 1, (count, 2), generator=generator)
    for i, (top, left) in enumerate(corners.tolist()):
        images[i, :, top : top + OBJECT, left : left + OBJECT] = COLOURS[labels[i]].view(3, 1, 1)
        where[i, top : top + OBJECT, left : left + OBJECT] = True
    return images, labels, where


_TRAINED: dict[tuple[bytes, str], tuple[dict[str, torch.Tensor], torch.Tensor]] = {}  # (generator state, pooling)


def trained_backbone(generator: torch.Generator, pooling: str = "max") -> TinyClassifier:
    """The toy classifier trained on the synthetic task with batches drawn from ``generator``, in eval mode;
    ``pooling="average"`` puts a global average pooling module (``pool``) before its classifier, the GAP that
    CA-Stream replaces. Trained once per process for a given generator state and pooling (the head's, RISE's and
    CA-Stream's tests share it); every call returns a new network and leaves ``generator`` and torch's global
    generator where training leaves them."""
    key = (generator.get_state().numpy().tobytes(), pooling)
    torch.manual_seed(0)
    network = TinyClassifier(num_classes=len(COLOURS), pooling=pooling)
    if key in _TRAINED:
        weights, after = _TRAINED[key]
        network.load_state_dict(weights)
        generator.set_state(after)
        return network.eval()
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    for _ in range(100):
        images, labels, _ = synthetic_batch(64, generator)
        loss = F.cross_entropy(network((images - 0.5) / 0.25), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _TRAINED[key] = ({name: value.clone() for name, value in network.state_dict().items()}, generator.get_state())
    return network.eval()


# A classifier with a closed-form output, for the metrics computed by hand (AD/IC, AG, Insertion, Deletion).
SCALE = 4.0


class MeanClassifier(nn.Module):
    """Two classes with logits [0, SCALE * mean pixel value]: p(class 1) = sigmoid(SCALE * mean)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = images.mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(mean), SCALE * mean], dim=1)


def sigmoid(value: float) -> float:
    return 1 / (1 + math.exp(-value))
