"""Where ImageNet is: ``--data``, else ``$IMAGENET_ROOT``, else ``data/ImageNet``, in torchvision's layout. Light to
import (no torch), so a command finds it before it loads anything heavy."""

from __future__ import annotations

import os
from pathlib import Path


def looks_like_imagenet(root: Path) -> bool:
    """ImageNet in torchvision's layout: ``train/`` and ``val/`` with one folder per class (1000)."""
    val = root / "val"
    return (root / "train").is_dir() and val.is_dir() and sum(p.is_dir() for p in val.iterdir()) == 1000


IMAGENET_ENV, DEFAULT_IMAGENET = "IMAGENET_ROOT", Path("data/ImageNet")


def find_imagenet(data: str | None) -> Path | None:
    """An ImageNet folder: ``--data`` if given, else ``$IMAGENET_ROOT``, else ``data/ImageNet``."""
    candidates: list[str | Path | None] = [data] if data else [os.environ.get(IMAGENET_ENV), DEFAULT_IMAGENET]
    for candidate in (c for c in candidates if c):  # (mypy reads filter(None, ...) as of objects)
        root = Path(candidate).expanduser()
        if root.is_dir() and looks_like_imagenet(root):
            return root
    return None
