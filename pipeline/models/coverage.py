"""Class coverage: which classes a head was trained on, so untrained maps are never passed off as explanations.

P-TAME's fusion conv has one row per class, and a row only learns when its class is the backbone's prediction
on a training image. A class explained fewer than ``min_count`` times in training is *untrained*: its map is
the random initial row and means nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pipeline.config import DEFAULT_MIN_COUNT  # the default of evaluation.min_class_count

if TYPE_CHECKING:
    from pipeline.models.head import AttentionHead


@dataclass(frozen=True)
class ClassCoverage:
    """Per-class training counts of a head (CPU tensors) and the threshold that makes a class trained."""

    target_counts: torch.Tensor  # [num_classes] training images whose explained class it was
    subset_counts: torch.Tensor  # [num_classes] training maps computed for it as a member of S
    min_count: int = DEFAULT_MIN_COUNT

    @classmethod
    def of(cls, head: AttentionHead, min_count: int = DEFAULT_MIN_COUNT) -> ClassCoverage:
        return cls(head.target_counts.detach().cpu(), head.subset_counts.detach().cpu(), min_count)

    @property
    def trained(self) -> torch.Tensor:
        """Bool [num_classes]: classes explained at least ``min_count`` times in training."""
        return self.target_counts >= self.min_count

    def covered(self, classes: torch.Tensor) -> torch.Tensor:
        """Bool [N]: whether each explained class in ``classes`` [N] is trained."""
        return self.trained[classes.detach().cpu().long()]

    def fraction(self, classes: torch.Tensor) -> float:
        """The share of ``classes`` (one explained class per image) that is trained; NaN for none."""
        return float(self.covered(classes).double().mean()) if classes.numel() else float("nan")

    def summary(self) -> dict[str, int]:
        """Class counts for logs: how many classes are trained, and how many were ever in S."""
        return {
            "num_classes": self.target_counts.numel(),
            "min_count": self.min_count,
            "classes_trained": int(self.trained.sum()),
            "classes_explained": int((self.target_counts > 0).sum()),
            "classes_in_subset": int((self.subset_counts > 0).sum()),
        }

    def counts(self) -> dict[str, dict[int, int]]:
        """The non-zero counts per class index, for a JSON artifact."""
        return {
            name: {int(i): int(tensor[i]) for i in tensor.nonzero().flatten()}
            for name, tensor in (("target_counts", self.target_counts), ("subset_counts", self.subset_counts))
        }
