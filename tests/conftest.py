"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture
def single_thread():
    """One intra-op thread: on a shared 2-core machine, small multi-threaded ops are erratic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Twelve random 40 x 48 PNGs in two class folders, ``tmp_path/images``."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(6):
            pixels = (torch.rand(40, 48, 3, generator=generator) * 255).byte().numpy()
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
    return tmp_path / "images"
