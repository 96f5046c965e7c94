"""The P-TAME loss (paper eq. 4, or the authors' code's form) and the class subset S it is computed on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.config import LossConfig


@dataclass
class LossTerms:
    """The weighted total and the three unweighted terms."""

    total: torch.Tensor
    cross_entropy: torch.Tensor
    area: torch.Tensor
    variation: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        values = torch.stack([self.total, self.cross_entropy, self.area, self.variation]).detach().tolist()
        return dict(zip(("loss", "loss_ce", "loss_area", "loss_variation"), values))


def class_subset(
    targets: torch.Tensor, size: int, num_classes: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """S: the batch's predicted classes topped up with uniformly drawn other classes to ``size``.

    Returns ``(classes [K], position [B])`` with ``classes[position[b]] == targets[b]``; K is
    ``max(size, number of distinct targets)`` so every image's own class is always in S.
    """
    predicted, position = torch.unique(targets, return_inverse=True)
    extra = min(size, num_classes) - predicted.numel()
    if extra > 0:
        available = torch.ones(num_classes, dtype=torch.bool)
        available[predicted.cpu()] = False
        pool = available.nonzero().squeeze(1)
        drawn = pool[torch.randperm(pool.numel(), generator=generator)[:extra]]
        predicted = torch.cat([predicted, drawn.to(predicted.device)])
    return predicted, position


def reference_class_subset(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """S as the authors' code takes it: the batch's predictions, duplicates included (K = B)."""
    return targets, torch.arange(targets.numel(), device=targets.device)


def area_loss(maps: torch.Tensor, power: float, epsilon: float = 0.0005) -> torch.Tensor:
    """``mean((E_S + ε)^λ_area)`` over every element of the maps."""
    return (maps + epsilon).pow(power).mean()


def variation_loss(maps: torch.Tensor) -> torch.Tensor:
    """Paper eq. 3: sum of squared neighbour differences along both axes over ``|E_S|``."""
    down = (maps[..., 1:, :] - maps[..., :-1, :]).pow(2).sum()
    right = (maps[..., :, 1:] - maps[..., :, :-1]).pow(2).sum()
    return (down + right) / maps.numel()


def reference_variation_loss(maps: torch.Tensor, border_penalty: float, power: float) -> torch.Tensor:
    """The authors' code: ``(Σ|Δy|^p + Σ|Δx|^p + b·Σ edges^p) / (p·B)`` over maps ``[B, K, h, w]``.

    A sum over every map and pixel divided by ``p`` times the batch size, about ``K·h·w/2`` times eq. 3;
    the border term sums the first and last rows and columns (corners twice), as that code does.
    """
    down = (maps[..., 1:, :] - maps[..., :-1, :]).abs().pow(power).sum()
    right = (maps[..., :, 1:] - maps[..., :, :-1]).abs().pow(power).sum()
    total = down + right
    if border_penalty > 0:
        edges = (
            maps[..., -1, :].pow(power)
            + maps[..., 0, :].pow(power)
            + maps[..., :, -1].pow(power)
            + maps[..., :, 0].pow(power)
        )
        total = total + border_penalty * edges.sum()
    return total / (power * maps.shape[0])


def ptame_loss(
    masked_logits: torch.Tensor, targets: torch.Tensor, subset_maps: torch.Tensor, loss: LossConfig
) -> LossTerms:
    """``λ1·CE(masked, c*) + λ2·area(E_S) + λ3·variation(E_S)``, the variation term in ``loss.variation``'s form."""
    maps = subset_maps.float()
    cross_entropy = F.cross_entropy(masked_logits.float(), targets)
    area = area_loss(maps, loss.lambda_area, loss.area_epsilon)
    if loss.variation == "reference":
        variation = reference_variation_loss(maps, loss.border_penalty, loss.variation_power)
    else:
        variation = variation_loss(maps)
    total = loss.lambda1 * cross_entropy + loss.lambda2 * area + loss.variation_weight * variation
    return LossTerms(total, cross_entropy, area, variation)
