"""The frozen classifier under ``torch.compile`` for the training step, with an eager fallback.

Full batches run the compiled graphs (one for the clean, gradient-free pass, one for the masked pass with
gradients); any other batch size runs eagerly, so a short last batch never recompiles. The backward graph,
which torch.compile builds lazily at the first backward pass, is built with the forward, so that its time
counts as compile time and its failure falls back too. If compilation fails, one warning line is printed
and training goes on eagerly.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
from torch import nn


class CompiledNetwork:
    """Calls ``torch.compile(network)`` on batches of ``batch_size`` images, ``network`` itself otherwise."""

    def __init__(self, network: nn.Module, batch_size: int):
        self.network = network
        self.compiled: Callable[[torch.Tensor], torch.Tensor] | None = torch.compile(network, dynamic=False)
        self.batch_size = batch_size
        self.compile_seconds = 0.0
        self._compiled_modes: set[bool] = set()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.compiled is None or images.shape[0] != self.batch_size:
            return self.network(images)
        grad_mode = torch.is_grad_enabled()
        if grad_mode in self._compiled_modes:
            return self.compiled(images)
        started = time.perf_counter()
        try:
            outputs = self.compiled(images)
            if grad_mode and outputs.requires_grad and images.requires_grad:
                torch.autograd.grad(outputs.float().sum(), images, retain_graph=True)  # compiles the backward
        except Exception as error:  # any compiler failure: the eager network still works
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            print(
                f"warning: torch.compile of {type(self.network).__name__} failed ({type(error).__name__}: "
                f"{reason[:200]}); training goes on without compiling (train.compile=false skips it)",
                file=sys.stderr,
            )
            self.compiled = None
            return self.network(images)
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
        self.compile_seconds += time.perf_counter() - started
        self._compiled_modes.add(grad_mode)
        return outputs


def compile_enabled(setting: bool | str, device: torch.device) -> bool:
    """``train.compile``: True/False as given, ``auto`` on CUDA only."""
    return device.type == "cuda" if setting == "auto" else bool(setting)
