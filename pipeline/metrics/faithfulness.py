"""Average Gain, Insertion and Deletion: CA-Stream's faithfulness measures, scored like our AD/IC.

Papers differ in every detail, so these are the conventions here:

- **score**: the softmax probability of the class the classifier predicted on the clean image;
- **masking space**: pixel space, the same as AD/IC and P-TAME's training (a removed pixel is black);
- **AG** = mean(max(0, O - Y) / (1 - Y)) * 100, with Y the clean and O the probability on the image
  multiplied by the whole soft map (Opti-CAM's definition, as CA-Stream computes it);
- **Deletion**: start from the image and replace the most salient pixels by the substrate, black
  (0 in pixel space), ``step`` pixels at a time;
- **Insertion**: start from the substrate, the image blurred with a Gaussian (kernel 11, sigma 5, as
  RISE), and put the most salient pixels of the image back, ``step`` pixels at a time;
- **step**: eight image rows of pixels (1792 px = 28 steps at 224 x 224, as RISE's evaluation notebook
  and CA-Stream); the score is recorded before the first step and after every step;
- **AUC**: trapezoid over the fraction of pixels changed in [0, 1]. It is linear in the scores, so the
  mean of the images' AUCs equals the AUC of their mean curve (the curve reported).

Pixels are ranked by ``removal_masks(..., "morf")`` (stable sort), as ROAD ranks them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torchvision.transforms.v2 import functional as TF

from pipeline.metrics.adic import masked_probabilities, target_probabilities
from pipeline.metrics.road import removal_masks

CausalMode = Literal["insertion", "deletion"]
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0
ROWS_PER_STEP = 8


def average_gain(clean_probs: torch.Tensor, masked_probs: torch.Tensor) -> float:
    """AG in percent: mean(max(0, O - Y) / (1 - Y)) * 100 (a Y of 1 cannot gain and counts 0)."""
    clean, masked = clean_probs.double().cpu(), masked_probs.double().cpu()
    room = (1 - clean).clamp_min(torch.finfo(torch.float64).eps)
    return ((masked - clean).clamp_min(0) / room).mean().item() * 100


def trapezoid_auc(fractions: Sequence[float], scores: Sequence[float]) -> float:
    """Area under the piecewise-linear curve through (fractions[i], scores[i])."""
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(fractions, fractions[1:], scores, scores[1:]))


def default_step(width: int) -> int:
    """Pixels changed per Insertion/Deletion step: eight image rows."""
    return ROWS_PER_STEP * width


def insertion_substrate(images: torch.Tensor) -> torch.Tensor:
    """The blurred image Insertion starts from."""
    return TF.gaussian_blur(images, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])


@dataclass
class CausalCurve:
    """Mean target probability after changing each fraction of pixels, and its AUC."""

    mode: CausalMode
    step: int
    fractions: list[float]
    scores: list[float]
    auc: float


def causal_counts(height: int, width: int, step: int | None = None) -> list[int]:
    """Pixels changed before the first and after every Insertion/Deletion step (``step`` defaults to eight rows)."""
    pixels = height * width
    step = step or default_step(width)
    return [min(k * step, pixels) for k in range(math.ceil(pixels / step) + 1)]


def causal_probabilities(
    classify: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    mode: CausalMode,
    step: int | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """Float64 [steps + 1, B] on the CPU: the target probability of every image after each Insertion or Deletion
    step (``causal_counts``) for maps [B, H, W]."""
    if mode not in ("insertion", "deletion"):
        raise ValueError(f"mode must be 'insertion' or 'deletion', got {mode!r}")
    pixels = images.shape[-2] * images.shape[-1]

    def changed(count: int) -> Callable[[slice], torch.Tensor]:
        def blend(chunk: slice) -> torch.Tensor:
            image = images[chunk]
            top = removal_masks(maps[chunk], count / pixels, "morf")[:, None]
            if mode == "deletion":
                return torch.where(top, torch.zeros_like(image), image)
            return torch.where(top, image, insertion_substrate(image))

        return blend

    return torch.stack(
        [
            target_probabilities(classify, changed(count), targets, batch_size)
            for count in causal_counts(images.shape[-2], images.shape[-1], step)
        ]
    )


def curve_of(
    mode: CausalMode, size: tuple[int, int], probabilities: torch.Tensor, step: int | None = None
) -> CausalCurve:
    """The mean curve of ``causal_probabilities`` [steps + 1, N] of a whole split (in any batches), and its AUC."""
    counts = causal_counts(*size, step)
    fractions = [count / (size[0] * size[1]) for count in counts]
    scores = [row.mean().item() for row in probabilities]
    return CausalCurve(mode, step or default_step(size[1]), fractions, scores, trapezoid_auc(fractions, scores))


def causal_curve(
    classify: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    mode: CausalMode,
    step: int | None = None,
    batch_size: int = 32,
) -> CausalCurve:
    """Insertion or Deletion curve of ``classify`` (pixel-space images -> logits) for maps [N, H, W]."""
    return curve_of(
        mode,
        (images.shape[-2], images.shape[-1]),
        causal_probabilities(classify, images, maps, targets, mode, step, batch_size),
        step,
    )


@dataclass
class FaithfulnessResult:
    """AG (percent), and the Insertion and Deletion curves."""

    average_gain: float
    insertion: CausalCurve
    deletion: CausalCurve

    def metrics(self) -> dict[str, float]:
        """Flat metric names: ag, insertion_auc, deletion_auc."""
        return {"ag": self.average_gain, "insertion_auc": self.insertion.auc, "deletion_auc": self.deletion.auc}


def faithfulness_probabilities(
    classify: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    step: int | None = None,
    batch_size: int = 32,
) -> dict[str, torch.Tensor]:
    """Per image (last axis): the target probability with the whole map applied ("masked", [B]) and after every
    Insertion and Deletion step ([steps + 1, B] each)."""
    maps = maps.to(images.device)
    return {
        "masked": masked_probabilities(classify, images, maps, targets, 1.0, batch_size),
        **{
            mode: causal_probabilities(classify, images, maps, targets, mode, step, batch_size)
            for mode in ("insertion", "deletion")
        },
    }


def faithfulness_result(
    clean_probs: torch.Tensor, probabilities: dict[str, torch.Tensor], size: tuple[int, int], step: int | None = None
) -> FaithfulnessResult:
    """AG, Insertion and Deletion from ``faithfulness_probabilities`` of a whole split (in any batches)."""
    return FaithfulnessResult(
        average_gain(clean_probs, probabilities["masked"]),
        curve_of("insertion", size, probabilities["insertion"], step),
        curve_of("deletion", size, probabilities["deletion"], step),
    )


def faithfulness(
    classify: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    clean_probs: torch.Tensor,
    step: int | None = None,
    batch_size: int = 32,
) -> FaithfulnessResult:
    """AG, Insertion and Deletion of maps [N, H, W] in [0, 1] for the clean predictions ``targets``."""
    return faithfulness_result(
        clean_probs,
        faithfulness_probabilities(classify, images, maps, targets, step, batch_size),
        (images.shape[-2], images.shape[-1]),
        step,
    )
