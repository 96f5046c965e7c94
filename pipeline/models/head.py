"""The P-TAME attention head: per-layer branches, then a 1x1 fusion conv to one map per class.

The fusion conv and bilinear upsampling are both linear, so the head fuses each branch at its own
resolution for only the requested classes and upsamples those few maps, instead of upsampling every
channel and computing all classes. The result equals the authors' order (upsample each branch by ×2
steps, concat, fuse) to float round-off.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Branch(nn.Module):
    """``1x1 conv (C->C) -> BN -> + input -> ReLU`` on one feature map."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(features)) + features)


class AttentionHead(nn.Module):
    """Raw (pre-activation) class maps at the resolution of the largest feature map.

    The fusion conv has one row per class, and only the rows of classes seen in training are trained, so
    the head also counts, per class, the training images it explained (``target_counts``) and the
    training maps it computed as a member of the subset S (``subset_counts``). The counts are buffers:
    they travel with the ``state_dict``.
    """

    target_counts: torch.Tensor  # buffers, registered in __init__
    subset_counts: torch.Tensor

    def __init__(self, channels: Sequence[int], num_classes: int = 1000):
        super().__init__()
        self.channels = list(channels)
        self.num_classes = num_classes
        self.branches = nn.ModuleList(Branch(c) for c in self.channels)
        self.fuse = nn.Conv2d(sum(self.channels), num_classes, kernel_size=1, bias=False)
        self.register_buffer("target_counts", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("subset_counts", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def record(self, targets: torch.Tensor, subset: torch.Tensor) -> None:
        """Count one training batch: ``targets`` [B] explained classes, ``subset`` [K] the classes of S."""
        self.target_counts += torch.bincount(targets, minlength=self.num_classes)
        self.subset_counts.index_add_(0, subset, torch.full_like(subset, targets.numel()))

    @torch.no_grad()
    def contributions(self, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Each branch's share of the fusion weights (P-TAME Table 2), float64 [branches], summing to 1.

        Per class row: softmax over the input channels, summed within each branch; then the plain mean
        over ``classes`` (all classes if None). Raw signed weights, no bias, no data: as the paper's code.
        """
        weight = self.fuse.weight[:, :, 0, 0].double()
        if classes is not None:
            weight = weight[classes]
        per_class = weight.softmax(dim=1).split(self.channels, dim=1)
        return torch.stack([block.sum(dim=1) for block in per_class], dim=1).mean(dim=0).cpu()

    def channel_shares(self) -> torch.Tensor:
        """Each branch's share of the fused channels: what ``contributions`` gives for uniform weights."""
        counts = torch.tensor(self.channels, dtype=torch.float64)
        return counts / counts.sum()

    def forward(
        self, features: Sequence[torch.Tensor], classes: torch.Tensor | None = None, per_image: bool = False
    ) -> torch.Tensor:
        """Maps ``[B, K, h, w]`` for ``classes`` (``[K]``, shared by the batch; all classes if None),
        or ``[B, 1, h, w]`` with ``per_image=True`` and ``classes`` of shape ``[B]`` (one class per image)."""
        size = max((f.shape[-2], f.shape[-1]) for f in features)
        weight = self.fuse.weight[:, :, 0, 0]
        if classes is not None:
            weight = weight[classes]
        maps = None
        for branch, part, block in zip(self.branches, features, weight.split(self.channels, dim=-1)):
            hidden = branch(part)
            if per_image:
                fused = torch.einsum("bchw,bc->bhw", hidden, block).unsqueeze(1)
            else:
                fused = F.conv2d(hidden, block[:, :, None, None])
            fused = upsample(fused, size)
            maps = fused if maps is None else maps + fused
        assert maps is not None  # max() above raised for empty features
        return maps


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of ``maps`` [..., h, w] to ``size`` as the authors' head does it.

    Where ``size`` is ``(h, w)`` times a power of two, repeated ×2 steps (``nn.Upsample(scale_factor=2)``
    in the reference code; two ×2 steps are not one ×4 step), otherwise one interpolation.
    """
    size = (int(size[0]), int(size[1]))
    height, width = maps.shape[-2:]
    if (height, width) == size:
        return maps
    ratio = size[0] // height
    if size == (height * ratio, width * ratio) and ratio & (ratio - 1) == 0:
        while maps.shape[-2] < size[0]:
            maps = F.interpolate(maps, scale_factor=2.0, mode="bilinear", align_corners=False)
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalisation over the last two dims to [0, 1] (the inference activation)."""
    flat = maps.flatten(-2)
    low = flat.min(-1, keepdim=True).values
    high = flat.max(-1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-8)).view_as(maps)


def activate(maps: torch.Tensor, training: bool) -> torch.Tensor:
    """Sigmoid while training, per-map min-max at inference (as in the paper's code)."""
    return torch.sigmoid(maps) if training else minmax(maps)
