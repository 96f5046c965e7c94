"""RISE (Petsiuk et al. 2018): saliency as the score-weighted mean of random masks; batched, seeded, memory-bounded.

S_c = sum_i P_c(I * M_i) * M_i / (N * p1), then min-max scaled to [0, 1] like every other map here. Masks follow
the authors' ``generate_masks``: an s x s grid of cells kept with probability p1, bilinearly upsampled to
(s + 1) cells of ceil(H / s) pixels, randomly shifted by less than one cell and cropped to H x W.

Choices, and why:
- N = 8000, s = 7, p1 = 0.5 by default: T-TAME's RISE baseline for every backbone, and the 8000 forward passes
  P-TAME reports for RISE on ResNet-50 (Table 1, Fig. 4); the RISE paper's per-backbone values could not be
  checked (VGG-16 rows in P-TAME say 4000).
- Masks multiply the **pixel-space** image (masked pixels go black), the space our metrics mask in; the authors
  multiplied the normalised tensor (mean colour).
- The score P_c is the softmax probability of the explained class, as in the authors' notebooks.
- Seeded: the small grids and shifts are drawn once from ``seed``; full-size masks are built ``batch_size`` at a
  time and reused for every image, so memory is one chunk of masks and masked images, not N full masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.models.head import minmax


@dataclass(frozen=True)
class RiseParameters:
    masks: int = 8000  # N, also the forward passes per explanation
    cells: int = 7  # s, the grid is s x s (map resolution R = s * s)
    keep: float = 0.5  # p1, probability that a cell is kept
    batch_size: int = 100  # masked images per forward pass
    seed: int = 0


class RiseMasks:
    """N seeded masks for H x W images, drawn as small grids and built at full size chunk by chunk."""

    def __init__(self, parameters: RiseParameters, size: tuple[int, int]):
        generator = torch.Generator().manual_seed(parameters.seed)
        cells = parameters.cells
        self.size = size
        self.cell = (math.ceil(size[0] / cells), math.ceil(size[1] / cells))
        self.grids = (torch.rand(parameters.masks, 1, cells, cells, generator=generator) < parameters.keep).float()
        self.shifts = torch.stack(
            [torch.randint(0, step, (parameters.masks,), generator=generator) for step in self.cell], dim=1
        )

    def __len__(self) -> int:
        return self.grids.shape[0]

    def __getitem__(self, chunk: slice) -> torch.Tensor:
        """Masks [n, H, W] in [0, 1] for the mask indices in ``chunk``."""
        grids, shifts = self.grids[chunk], self.shifts[chunk]
        cells = grids.shape[-1] + 1
        upsampled = F.interpolate(
            grids, size=(cells * self.cell[0], cells * self.cell[1]), mode="bilinear", align_corners=False
        )[:, 0]
        rows = shifts[:, :1] + torch.arange(self.size[0])
        cols = shifts[:, 1:] + torch.arange(self.size[1])
        which = torch.arange(grids.shape[0])[:, None, None]
        return upsampled[which, rows[:, :, None], cols[:, None, :]]


def rise_saliency(
    classify: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    targets: torch.Tensor,
    parameters: RiseParameters = RiseParameters(),
) -> torch.Tensor:
    """RISE maps [B, H, W] in [0, 1] of ``targets`` [B] for pixel-space ``images`` [B, 3, H, W]."""
    masks = RiseMasks(parameters, (images.shape[-2], images.shape[-1]))
    saliency = torch.zeros(images.shape[0], images[0, 0].numel(), dtype=torch.float64, device=images.device)
    with torch.inference_mode():
        for start in range(0, len(masks), parameters.batch_size):
            chunk = masks[start : start + parameters.batch_size].to(images.device)
            flat = chunk.flatten(1).double()
            for index, (image, target) in enumerate(zip(images, targets)):
                probs = classify(image * chunk[:, None]).softmax(dim=1)[:, target]
                saliency[index] += probs.double() @ flat
    saliency /= len(masks) * parameters.keep
    return minmax(saliency.view(images.shape[0], *images.shape[-2:]).float())
