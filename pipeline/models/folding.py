"""Fold a frozen network's eval-mode BatchNorms into the convolutions that feed them.

An eval-mode BatchNorm is an affine map per channel; when its input is exactly a convolution's output, the map
can move into that convolution's weights and bias, and the network computes the same function with one op less
per layer (measured on the 2-core CPU: EfficientNet-Lite0's forward 15 % and forward + input gradient 23 %
faster; logits within 2e-5 of the unfolded network's). Names keep their modules: a folded BatchNorm becomes a
``FoldedNorm`` that applies only what the BatchNorm applied after normalising (timm's activation), so every
named module outputs what it did before, except the folded convolutions, which now output the normalised values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

# A fold is kept only if the network's outputs on a probe stay this close to the unfolded ones (relative to their
# largest magnitude); a convolution whose output also feeds something else than its BatchNorm fails it.
_PROBE_TOLERANCE = 1e-4


class FoldedNorm(nn.Module):
    """What remains of a BatchNorm folded into convolution ``conv``: its post-normalisation part, if any."""

    def __init__(self, conv: str, after: nn.Module):
        super().__init__()
        self.conv = conv
        self.after = after

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.after(inputs)


def _after_normalising(norm: nn.BatchNorm2d) -> nn.Module | None:
    """The part of ``norm`` that follows its normalisation: nothing for torch's own, timm's drop and activation
    for ``BatchNormAct2d``; None for another subclass (its forward is unknown, so it is not folded)."""
    if type(norm) is nn.BatchNorm2d:
        return nn.Identity()
    if type(norm).__name__ == "BatchNormAct2d" and hasattr(norm, "drop") and hasattr(norm, "act"):
        return nn.Sequential(cast(nn.Module, norm.drop), cast(nn.Module, norm.act))  # timm's, not declared on nn's
    return None


def _conv_norm_pairs(network: nn.Module, probe: torch.Tensor) -> tuple[dict[str, str], Any]:
    """Convolution name -> BatchNorm name, for each eval-mode BatchNorm whose input is a convolution's output, and
    the network's output on ``probe``."""
    names = {module: name for name, module in network.named_modules()}
    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # the tensors are kept so that no id is reused
    pairs: dict[str, str] = {}

    def seen_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        outputs[id(output)] = (names[module], output)

    def seen_input(module: nn.Module, inputs: tuple) -> None:
        conv = outputs.get(id(inputs[0]))
        if conv and not module.training and module.track_running_stats and module.running_var is not None:
            pairs[conv[0]] = names[module]

    convs = [module for module in network.modules() if isinstance(module, nn.Conv2d)]
    norms = [module for module in network.modules() if isinstance(module, nn.BatchNorm2d)]
    hooks = [conv.register_forward_hook(seen_output) for conv in convs]
    hooks += [norm.register_forward_pre_hook(seen_input) for norm in norms]
    try:
        with torch.no_grad():
            output = network(probe)
    finally:
        for hook in hooks:
            hook.remove()
    return pairs, output


def _fold(
    network: nn.Module, modules: dict[str, nn.Module], conv_name: str, norm_name: str
) -> Callable[[], None] | None:
    """Fold one pair in place (``modules``: the network's named modules); returns how to undo it, or None where the
    pair cannot be folded."""
    conv, norm = modules[conv_name], modules[norm_name]
    if not isinstance(conv, nn.Conv2d) or not isinstance(norm, nn.BatchNorm2d):
        return None
    after, mean, variance = _after_normalising(norm), norm.running_mean, norm.running_var
    if after is None or mean is None or variance is None:
        return None
    weight, bias = conv.weight, conv.bias
    scale = (norm.weight if norm.affine else torch.ones_like(variance)) / torch.sqrt(variance + norm.eps)
    shift = (norm.bias if norm.affine else torch.zeros_like(mean)) - mean * scale
    conv.weight = nn.Parameter(weight * scale.view(-1, 1, 1, 1).to(weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter((shift if bias is None else bias * scale + shift).to(weight.dtype), requires_grad=False)
    parent_name, _, child = norm_name.rpartition(".")
    parent = modules[parent_name] if parent_name else network
    setattr(parent, child, FoldedNorm(conv_name, after))

    def undo() -> None:
        conv.weight, conv.bias = weight, bias
        setattr(parent, child, norm)

    return undo


@torch.no_grad()
def fold_batch_norms(network: nn.Module, probe: torch.Tensor) -> int:
    """Fold, in place, each BatchNorm of ``network`` (eval mode, frozen) that directly follows a convolution;
    ``probe`` (a batch the network takes) finds the pairs and checks the result: if the folded network's outputs
    on it differ from the unfolded ones, every fold is undone. Returns how many BatchNorms were folded."""
    pairs, expected = _conv_norm_pairs(network, probe)
    if not pairs:
        return 0
    modules = dict(network.named_modules())
    undos = [undo for pair in pairs.items() if (undo := _fold(network, modules, *pair))]
    if not _close(network(probe), expected):
        for undo in reversed(undos):
            undo()
        return 0
    return len(undos)


def _close(outputs: Any, expected: Any) -> bool:
    """Whether two outputs (a tensor, or a list or tuple of tensors) agree within _PROBE_TOLERANCE."""
    if isinstance(expected, (list, tuple)):
        return (
            isinstance(outputs, (list, tuple)) and len(outputs) == len(expected) and all(map(_close, outputs, expected))
        )
    if (
        not isinstance(expected, torch.Tensor)
        or not isinstance(outputs, torch.Tensor)
        or outputs.shape != expected.shape
    ):
        return False
    scale = expected.abs().max().clamp_min(1e-12)
    return bool((outputs - expected).abs().max() / scale <= _PROBE_TOLERANCE)


def folded_convolution(network: nn.Module, name: str) -> str | None:
    """The BatchNorm folded into convolution ``name`` of ``network``, if any."""
    for norm_name, module in network.named_modules():
        if isinstance(module, FoldedNorm) and module.conv == name:
            return norm_name
    return None


def is_folded(network: nn.Module) -> bool:
    return any(isinstance(module, FoldedNorm) for module in network.modules())
