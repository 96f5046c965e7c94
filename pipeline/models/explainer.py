"""The complete explainer: frozen classifier + frozen auxiliary features + trainable head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.auxiliary import FeatureExtractor
from pipeline.models.classifiers import Classifier
from pipeline.models.coverage import DEFAULT_MIN_COUNT
from pipeline.models.head import AttentionHead, minmax


@dataclass
class Explanation:
    """Saliency maps at image resolution in [0, 1], the explained classes, the clean logits, and whether
    each explained class was trained (an untrained class's map is the head's random initial row)."""

    saliency: torch.Tensor  # [B, H, W]
    classes: torch.Tensor  # [B]
    logits: torch.Tensor  # [B, num_classes]
    trained: torch.Tensor  # [B] bool


class Explainer(nn.Module):
    """One forward pass gives the map of any class; only ``head`` has trainable parameters."""

    def __init__(
        self,
        classifier: Classifier,
        auxiliary: FeatureExtractor,
        head: AttentionHead,
        masking: Literal["pixel", "normalized"] = "pixel",
    ):
        super().__init__()
        self.classifier = classifier
        self.auxiliary = auxiliary
        self.head = head
        self.masking = masking

    @torch.no_grad()
    def saliency(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Min-max maps ``[B, H, W]`` in [0, 1] of ``classes`` ``[B]`` upsampled to the image size (the head in eval
        mode; no classifier pass)."""
        was_training = self.head.training
        self.head.eval()
        try:
            raw = self.head(self.auxiliary(images), classes.to(images.device), per_image=True)
            maps = F.interpolate(minmax(raw), size=images.shape[-2:], mode="bilinear", align_corners=False)
        finally:
            self.head.train(was_training)
        return maps[:, 0].clamp(0, 1)

    @torch.no_grad()
    def explain(
        self, images: torch.Tensor, classes: torch.Tensor | None = None, min_count: int = DEFAULT_MIN_COUNT
    ) -> Explanation:
        """Min-max maps of ``classes`` (default: the classifier's own prediction) upsampled to the image size;
        a class is trained when it was explained at least ``min_count`` times in training."""
        logits = self.classifier(images)
        targets = logits.argmax(1) if classes is None else classes.to(images.device)
        trained = self.head.target_counts[targets] >= min_count
        return Explanation(self.saliency(images, targets), targets, logits, trained)
