"""The P-TAME loss (paper eq. 4) and the class subset S it is computed on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def class_subset(targets: torch.Tensor, size: int, num_classes: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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


def area_loss(maps: torch.Tensor, power: float, epsilon: float = 0.0005) -> torch.Tensor:
    """``mean((E_S + ε)^λ_area)`` over every element of the maps."""
    return (maps + epsilon).pow(power).mean()


def variation_loss(maps: torch.Tensor) -> torch.Tensor:
    """Paper eq. 3: sum of squared neighbour differences along both axes over ``|E_S|``."""
    down = (maps[..., 1:, :] - maps[..., :-1, :]).pow(2).sum()
    right = (maps[..., :, 1:] - maps[..., :, :-1]).pow(2).sum()
    return (down + right) / maps.numel()


def ptame_loss(masked_logits: torch.Tensor, targets: torch.Tensor, subset_maps: torch.Tensor,
               lambda1: float, lambda2: float, lambda_area: float, epsilon: float = 0.0005) -> LossTerms:
    """``λ1·CE(masked, c*) + λ2·area(E_S) + λ3·variation(E_S)`` with ``λ3 = 1 − λ1 − λ2``."""
    cross_entropy = F.cross_entropy(masked_logits.float(), targets)
    area = area_loss(subset_maps.float(), lambda_area, epsilon)
    variation = variation_loss(subset_maps.float())
    total = lambda1 * cross_entropy + lambda2 * area + (1.0 - lambda1 - lambda2) * variation
    return LossTerms(total, cross_entropy, area, variation)
