"""Average Drop (AD) and Increase in Confidence (IC) of soft-masked images.

For each kept fraction, every map keeps its top values (soft, not binarised) and zeroes the
rest; the image is multiplied by that map in pixel space. With Y the clean and O the masked
softmax probability of the target class: AD = mean(max(0, Y - O) / Y) * 100, IC = mean(O > Y) * 100.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pipeline.metrics.road import removal_masks

DEFAULT_KEEP = (1.0, 0.5, 0.15)


@dataclass
class AdIcResult:
    """AD and IC (percent) per kept fraction."""

    keep: list[float]
    ad: list[float]
    ic: list[float]

    def metrics(self) -> dict[str, float]:
        """Flat metric names: ad_100, ic_100, ad_50, ic_50, ad_15, ic_15 (kept percent)."""
        flat = {}
        for keep, ad, ic in zip(self.keep, self.ad, self.ic):
            flat[f"ad_{round(keep * 100)}"] = ad
            flat[f"ic_{round(keep * 100)}"] = ic
        return flat


def kept_maps(maps: torch.Tensor, keep: float) -> torch.Tensor:
    """maps [N, H, W] with all but the top round(keep * H * W) values of each map set to zero."""
    if keep >= 1:
        return maps
    return maps * ~removal_masks(maps, 1 - keep, "lerf")


def target_probabilities(
    classify: Callable[[torch.Tensor], torch.Tensor],
    perturbed: Callable[[slice], torch.Tensor],
    targets: torch.Tensor,
    batch_size: int = 32,
) -> torch.Tensor:
    """Softmax probability of ``targets[i]`` on perturbed images, built and classified batch by batch.

    ``perturbed(chunk)`` returns the pixel-space images of the images in ``chunk`` (a slice), so
    at most ``batch_size`` perturbed images exist at a time. Returns float64 [N] on the CPU.
    """
    probs = []
    with torch.inference_mode():
        for start in range(0, targets.shape[0], batch_size):
            chunk = slice(start, start + batch_size)
            logits = classify(perturbed(chunk))
            probs.append(logits.softmax(dim=1).gather(1, targets[chunk, None].to(logits.device))[:, 0])
    return torch.cat(probs).double().cpu()


def masked_probabilities(
    classify: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    keep: float,
    batch_size: int = 32,
) -> torch.Tensor:
    """Target probabilities on ``images`` multiplied in pixel space by ``kept_maps(maps, keep)``."""
    return target_probabilities(
        classify, lambda chunk: images[chunk] * kept_maps(maps[chunk], keep)[:, None], targets, batch_size
    )


def adic_probabilities(
    classify: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    keep: Sequence[float] = DEFAULT_KEEP,
    batch_size: int = 32,
) -> torch.Tensor:
    """Float64 [kept fractions, B] on the CPU: ``masked_probabilities`` for every fraction in ``keep``."""
    return torch.stack([masked_probabilities(classify, images, maps, targets, float(k), batch_size) for k in keep])


def adic_result(keep: Sequence[float], clean_probs: torch.Tensor, masked: torch.Tensor) -> AdIcResult:
    """AD/IC from the clean probabilities [N] and the masked ones [kept fractions, N] (``adic_probabilities`` of
    a whole split, in any batches)."""
    clean = clean_probs.double().cpu()
    drops = [((clean - row).clamp_min(0) / clean).mean().item() * 100 for row in masked]
    increases = [(row > clean).double().mean().item() * 100 for row in masked]
    return AdIcResult([float(k) for k in keep], drops, increases)


def ad_ic(
    classify: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    clean_probs: torch.Tensor,
    keep: Sequence[float] = DEFAULT_KEEP,
    batch_size: int = 32,
) -> AdIcResult:
    """AD/IC of ``classify`` (pixel-space images [N, 3, H, W] -> logits) for maps [N, H, W] in [0, 1].

    ``targets`` [N] are the explained classes, ``clean_probs`` [N] their softmax probabilities on
    the clean images.
    """
    return adic_result(keep, clean_probs, adic_probabilities(classify, images, maps, targets, keep, batch_size))
