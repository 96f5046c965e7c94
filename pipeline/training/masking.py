"""P-TAME masking: multiply the image by its upsampled explanation map in pixel space.

Images are pixel-space [0, 1] tensors and every network normalises its own input, so
"un-normalise, multiply, re-normalise with the backbone's mean/std" is a plain product here.
``normalized`` mode is T-TAME's ViT variant (the mask multiplies the normalised tensor, so
masked pixels become the mean colour).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, h, w]`` maps -> ``[B, 1, H, W]`` by bilinear interpolation."""
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False)


def mask_images(
    images: torch.Tensor, maps: torch.Tensor, mean: torch.Tensor, mode: Literal["pixel", "normalized"] = "pixel"
) -> torch.Tensor:
    """Mask pixel-space ``images`` ``[B, 3, H, W]`` with ``maps`` ``[B, h, w]`` in [0, 1]."""
    weights = upsample(maps, (images.shape[-2], images.shape[-1]))
    if mode == "pixel":
        return images * weights
    return mean + (images - mean) * weights
