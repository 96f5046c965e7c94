"""The device a run or command uses: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``."""

from __future__ import annotations

import torch

from pipeline.config import DEVICE_HELP
from pipeline.errors import UserError


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """The device ``name`` (``auto``: CUDA when there is one) given as ``setting``, named in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{setting} {name!r}: no CUDA device is available here; use cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"{setting} {name!r} is not a device; use {DEVICE_HELP}") from None
