"""The frozen networks of a model config on their device, and a freshly initialised head around them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.config import ModelConfig
from pipeline.models.auxiliary import FeatureExtractor, backbone_features, load_auxiliary
from pipeline.models.classifiers import Classifier, load_classifier
from pipeline.models.explainer import Explainer
from pipeline.models.folding import fold_batch_norms
from pipeline.models.head import AttentionHead


@dataclass
class Models:
    """The frozen networks of one model config, on their device."""

    classifier: Classifier
    auxiliary: FeatureExtractor
    num_classes: int
    channels: list[int]
    device: torch.device


def load_models(model: ModelConfig, device: torch.device, fold: bool = True) -> Models:
    """Load the classifier and the auxiliary feature extractor, frozen, on ``device``; with ``fold``, the
    classifier's BatchNorms folded into its convolutions (faster, same function; not for randomising its layers)."""
    classifier = load_classifier(model.backbone, model.backbone_weights)
    size = classifier.preprocessing.input_size
    if fold:
        probe = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        fold_batch_norms(classifier.network, classifier.normalize(probe))
    if model.auxiliary == "backbone":
        auxiliary = backbone_features(classifier, model.auxiliary_layers)
    else:
        auxiliary = load_auxiliary(model.auxiliary, model.auxiliary_layers, model.auxiliary_weights)
    layout = torch.channels_last
    # Module.to takes a device and a memory format together, though torch's overloads of it leave that out.
    classifier.to(device, memory_format=layout)  # type: ignore[call-overload]
    auxiliary.to(device, memory_format=layout)  # type: ignore[call-overload]
    with torch.no_grad():
        num_classes = classifier(torch.zeros(1, 3, size, size, device=device)).shape[1]
    return Models(classifier, auxiliary, num_classes, auxiliary.channels(size), device)


def build_explainer(models: Models, model: ModelConfig, seed: int) -> Explainer:
    """A freshly initialised head (seeded) around the frozen networks."""
    torch.manual_seed(seed)
    head = AttentionHead(models.channels, models.num_classes)
    head.to(models.device, memory_format=torch.channels_last)  # type: ignore[call-overload]  # (as above)
    return Explainer(models.classifier, models.auxiliary, head, model.masking)
