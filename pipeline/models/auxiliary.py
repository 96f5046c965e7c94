"""Feature maps of a frozen auxiliary network, read with forward hooks on named layers.

Works for any ``nn.Module`` (torchvision, timm, a user's own): the forward pass stops right after the last
requested layer, so the unused tail of the network costs nothing. Token outputs of a Vision Transformer
(``[B, N, C]``) are turned into ``[B, C, h, w]`` grids with the class token(s) dropped (T-TAME mode).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.models.classifiers import FrozenNetwork, Preprocessing, build_network, in_parts

LAYER_PRESETS: dict[str, list[str]] = {
    "resnet18": ["layer1", "layer2", "layer3", "layer4"],
    "resnet50": ["layer2", "layer3", "layer4"],
    "mobilenet_v3_small": ["features.9", "features.10", "features.11", "features.12"],
    "mnasnet0_5": ["layers.13", "layers.14", "layers.15", "layers.16"],
    "efficientnet_lite0": ["blocks.1", "blocks.2", "blocks.4", "blocks.6"],
    "efficientnet_lite1": ["blocks.1", "blocks.2", "blocks.4", "blocks.6"],
    "efficientnet_lite2": ["blocks.1", "blocks.2", "blocks.4", "blocks.6"],
    "vgg16": ["features.16", "features.23", "features.30"],
    "vit_b_16": [
        "encoder.layers.encoder_layer_9.ln_1",
        "encoder.layers.encoder_layer_10.ln_1",
        "encoder.layers.encoder_layer_11.ln_1",
    ],
}


class _StopForward(Exception):
    """Raised by the last hook to skip the rest of the network."""


def tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """``[B, N, C]`` transformer tokens -> ``[B, C, h, w]``, dropping leading class/register tokens."""
    batch, count, channels = tokens.shape
    side = math.isqrt(count)
    extra = count - side * side
    return tokens[:, extra:].transpose(1, 2).reshape(batch, channels, side, side)


class FeatureExtractor(FrozenNetwork):
    """Frozen network returning the feature maps of ``layers`` for pixel-space images."""

    def __init__(self, name: str, network: nn.Module, preprocessing: Preprocessing, layers: Sequence[str]):
        super().__init__(name, network, preprocessing)
        modules = dict(self.network.named_modules())
        missing = [layer for layer in layers if layer not in modules]
        if missing or not layers:
            candidates = [n for n in modules if n and n.count(".") <= 1]
            raise UserError(
                f"auxiliary {name!r} has no layer(s) {missing or '(none given)'}; set model.auxiliary_layers to "
                f"module names such as: {', '.join(candidates[:40])}"
            )
        self.layers = list(layers)
        self._outputs: dict[str, torch.Tensor] = {}
        self._recording = False
        for layer in self.layers:
            modules[layer].register_forward_hook(self._hook(layer))

    def _hook(self, layer: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not self._recording:  # the network may be shared with the classifier (T-TAME mode)
                return
            self._outputs[layer] = output
            if len(self._outputs) == len(self.layers):
                raise _StopForward

        return record

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return in_parts(self._features, images)

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        self._outputs, self._recording = {}, True
        try:
            self.network(self.normalize(images))
        except _StopForward:
            pass
        finally:
            self._recording = False
        features = [self._outputs[layer] for layer in self.layers]
        self._outputs = {}
        return [tokens_to_grid(f) if f.dim() == 3 else f for f in features]

    @torch.no_grad()
    def channels(self, input_size: int) -> list[int]:
        """Channel count of each feature map, from a dry run at ``input_size``."""
        probe = torch.zeros(1, 3, input_size, input_size, device=self.mean.device)
        return [f.shape[1] for f in self(probe)]


def load_auxiliary(name: str, layers: Sequence[str] | None = None, weights: str | None = None) -> FeatureExtractor:
    """A frozen feature extractor for ``name`` with the preset layers unless ``layers`` is given."""
    if layers is None:
        if name not in LAYER_PRESETS:
            raise UserError(
                f"no layer preset for auxiliary {name!r}; presets exist for {', '.join(LAYER_PRESETS)}. "
                "Name the layers with model.auxiliary_layers: [...]"
            )
        layers = LAYER_PRESETS[name]
    network, preprocessing, _ = build_network(name, weights)
    return FeatureExtractor(name, network, preprocessing, layers)


def backbone_features(classifier: FrozenNetwork, layers: Sequence[str] | None = None) -> FeatureExtractor:
    """T-TAME mode: the head reads the explained classifier's own layers (shares its weights)."""
    layers = layers if layers is not None else LAYER_PRESETS.get(classifier.name)
    if layers is None:
        raise UserError(f"name the backbone layers for {classifier.name!r} with model.auxiliary_layers: [...]")
    return FeatureExtractor(classifier.name, classifier.network, classifier.preprocessing, layers)
