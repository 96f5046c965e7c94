"""The complete explainer: frozen classifier + frozen auxiliary features + trainable head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.auxiliary import FeatureExtractor
from pipeline.models.classifiers import Classifier
from pipeline.models.head import AttentionHead, minmax


@dataclass
class Explanation:
    """Saliency maps at image resolution in [0, 1], the explained classes and the clean logits."""

    saliency: torch.Tensor  # [B, H, W]
    classes: torch.Tensor  # [B]
    logits: torch.Tensor  # [B, num_classes]


class Explainer(nn.Module):
    """One forward pass gives the map of any class; only ``head`` has trainable parameters."""

    def __init__(self, classifier: Classifier, auxiliary: FeatureExtractor, head: AttentionHead,
                 masking: Literal["pixel", "normalized"] = "pixel"):
        super().__init__()
        self.classifier = classifier
        self.auxiliary = auxiliary
        self.head = head
        self.masking = masking

    @torch.no_grad()
    def explain(self, images: torch.Tensor, classes: torch.Tensor | None = None) -> Explanation:
        """Min-max maps of ``classes`` (default: the classifier's own prediction) upsampled to the image size."""
        was_training = self.head.training
        self.head.eval()
        try:
            logits = self.classifier(images)
            targets = logits.argmax(1) if classes is None else classes.to(images.device)
            raw = self.head(self.auxiliary(images), targets, per_image=True)
            maps = F.interpolate(minmax(raw), size=images.shape[-2:], mode="bilinear", align_corners=False)
        finally:
            self.head.train(was_training)
        return Explanation(maps[:, 0].clamp(0, 1), targets, logits)
