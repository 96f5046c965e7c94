"""The frozen networks' outputs on the clean training batches, kept for the next run over the same batches.

Every trial of a search trains on the same views in the same order (the order, the crops and the demo's views
are all seeded), so only the first run pays the clean forward passes of each batch: the classifier's prediction
and the auxiliary network's features. Each kept batch carries a checksum of its pixels (per image: the sum and
the sum of squares); a batch whose checksum differs is computed anew, so a change of data, seed or batch size can
never reuse a wrong output. Everything kept is dropped when a run starts with other networks, or with the same
ones after an in-place change of their weights (the model-randomisation test does that). Features are kept on the
CPU only, up to FEATURE_BYTES (on a GPU the auxiliary pass costs less than holding its output); predictions always.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Classify = Callable[[torch.Tensor], torch.Tensor]
Extract = Callable[[torch.Tensor], list[torch.Tensor]]
FEATURE_BYTES = 1 << 30  # the demo's 384 views keep 222 MB of EfficientNet-Lite1 features


def checksum(images: torch.Tensor) -> torch.Tensor:
    """``[B, 2]``: the sum and the sum of squares of each image's pixels (float64)."""
    pixels = images.flatten(1).double()
    return torch.stack([pixels.sum(1), pixels.square().sum(1)], dim=1)


def _weights_versions(networks: tuple[nn.Module, ...]) -> tuple[int, ...]:
    return tuple(t._version for network in networks for t in (*network.parameters(), *network.buffers()))


class _Kept:
    """One batch's checksum, prediction and (when kept) features."""

    def __init__(self, sums: torch.Tensor, targets: torch.Tensor) -> None:
        self.sums, self.targets = sums, targets
        self.features: list[torch.Tensor] | None = None


class FrozenOutputs:
    """Clean predictions and auxiliary features by batch number, shared by the runs of one `Workbench`."""

    def __init__(self, feature_bytes: int = FEATURE_BYTES) -> None:
        self._kept: dict[int, _Kept] = {}
        self._networks: tuple[nn.Module, ...] = ()
        self._weights_versions: tuple[int, ...] = ()
        self.feature_bytes = feature_bytes
        self._feature_bytes_kept = 0
        self.reused = 0  # batches whose prediction was reused
        self.computed = 0  # batches classified
        self.reused_features = 0  # batches whose features were reused

    def begin(self, classifier: nn.Module, auxiliary: nn.Module | None = None) -> None:
        """Start a run with these networks: drop what was kept for other networks or weights."""
        networks = (classifier,) if auxiliary is None else (classifier, auxiliary)
        versions = _weights_versions(networks)
        if (
            len(networks) != len(self._networks)
            or any(a is not b for a, b in zip(networks, self._networks))
            or versions != self._weights_versions
        ):
            self._kept.clear()
            self._feature_bytes_kept = 0
            self._networks, self._weights_versions = networks, versions

    def _batch(self, batch: int, images: torch.Tensor, classify: Classify) -> _Kept:
        sums = checksum(images)
        kept = self._kept.get(batch)
        if kept is not None and torch.equal(kept.sums, sums):
            self.reused += 1
            return kept
        if kept is not None and kept.features is not None:
            self._feature_bytes_kept -= sum(f.numel() * f.element_size() for f in kept.features)
        kept = self._kept[batch] = _Kept(sums, classify(images).argmax(1))
        self.computed += 1
        return kept

    def outputs(
        self, batch: int, images: torch.Tensor, classify: Classify, extract: Extract
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The classifier's argmax and the auxiliary features of batch number ``batch``, kept ones where the pixels
        are the same; features are kept on the CPU while FEATURE_BYTES allow."""
        kept = self._batch(batch, images, classify)
        if kept.features is not None:
            self.reused_features += 1
            return kept.targets, kept.features
        features = extract(images)
        size = sum(f.numel() * f.element_size() for f in features)
        if images.device.type == "cpu" and self._feature_bytes_kept + size <= self.feature_bytes:
            kept.features = features
            self._feature_bytes_kept += size
        return kept.targets, features
