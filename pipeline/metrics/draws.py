"""Random draws tied to an image's place in its split, not to the batch it is scored in: ROAD's imputation noise
and the random reference maps are the same whether a split is scored whole or streamed in batches of any size."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def image_seed(seed: int, index: int, stream: str) -> int:
    """A 63-bit seed for image ``index`` of a split; ``stream`` names the use, so unrelated draws stay independent."""
    digest = hashlib.blake2b(f"{stream}:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def image_draws(seed: int, first: int, count: int, shape: Sequence[int], stream: str, normal: bool,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[count, *shape] draws for images ``first .. first + count - 1``: standard normal, or uniform in [0, 1)."""
    draw = torch.randn if normal else torch.rand
    draws = torch.empty(count, *shape, device=device, dtype=dtype)
    for i in range(count):
        draw(tuple(shape), generator=torch.Generator(device=device).manual_seed(image_seed(seed, first + i, stream)),
             out=draws[i])
    return draws
