"""The classifier's predictions on the clean training batches, kept for the next run over the same batches.

Every trial of a search trains on the same views in the same order (the order, the crops and the demo's views
are all seeded), so only the first run pays the clean forward pass of each batch. Each kept batch carries a
checksum of its pixels (per image: the sum and the sum of squares); a batch whose checksum differs is
classified anew, so a change of data, seed or batch size can never reuse a wrong prediction. Everything kept
is dropped when a run starts with another classifier, or with the same one after an in-place change of its
weights (the model-randomisation test does that).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

Classify = Callable[[torch.Tensor], torch.Tensor]


def checksum(images: torch.Tensor) -> torch.Tensor:
    """``[B, 2]``: the sum and the sum of squares of each image's pixels (float64)."""
    pixels = images.flatten(1).double()
    return torch.stack([pixels.sum(1), pixels.square().sum(1)], dim=1)


class CleanTargets:
    """Clean predictions by batch number, shared by the runs of one `Workbench`."""

    def __init__(self) -> None:
        self._kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._network: nn.Module | None = None
        self._weights_versions: tuple[int, ...] = ()
        self.reused = 0
        self.computed = 0

    def begin(self, network: nn.Module) -> None:
        """Start a run that classifies with ``network``: drop what was kept for another network or weights."""
        versions = tuple(t._version for t in (*network.parameters(), *network.buffers()))
        if network is not self._network or versions != self._weights_versions:
            self._kept.clear()
            self._network, self._weights_versions = network, versions

    def predict(self, batch: int, images: torch.Tensor, classify: Classify) -> torch.Tensor:
        """The classifier's argmax for batch number ``batch``: the kept one if the pixels are the same."""
        sums = checksum(images)
        kept = self._kept.get(batch)
        if kept is not None and torch.equal(kept[0], sums):
            self.reused += 1
            return kept[1]
        targets = classify(images).argmax(1)
        self._kept[batch] = (sums, targets)
        self.computed += 1
        return targets
