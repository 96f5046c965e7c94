"""Cascading, bottom-up randomisation of a network block by block (the model-parameter randomisation test).

A block is a set of module names. A ``state_dict`` entry belongs to a block when its key equals one of the
names or starts with a name followed by "." (exact prefixes, never substrings: ``blocks.1`` does not catch
``blocks.10``). Randomising a block copies every one of its tensors, parameters and buffers (BatchNorm
statistics) alike, from a fresh, seeded initialisation of the same architecture, as P-TAME's reference
code does with a freshly built model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.models.classifiers import build_network
from pipeline.models.folding import is_folded


@dataclass(frozen=True)
class Block:
    """Modules randomised together, named as in the network's ``named_modules()``/``state_dict()``."""

    label: str
    modules: tuple[str, ...]

    def owns(self, key: str) -> bool:
        return any(key == name or key.startswith(name + ".") for name in self.modules)


def _each(*names: str) -> list[Block]:
    return [Block(name, (name,)) for name in names]


def _efficientnet_lite_blocks() -> list[Block]:
    return [
        Block("stem", ("conv_stem", "bn1")),
        *_each(*(f"blocks.{i}" for i in range(7))),
        Block("conv_head", ("conv_head", "bn2")),
        *_each("classifier"),
    ]


# Input to output. VGG-16's blocks end at its max-pools (features.4, 9, 16, 23, 30 hold no weights).
BLOCK_PRESETS: dict[str, list[Block]] = {
    "resnet50": [Block("stem", ("conv1", "bn1")), *_each("layer1", "layer2", "layer3", "layer4", "fc")],
    "vgg16": [
        Block(f"conv{i + 1}", tuple(f"features.{n}" for n in convs))
        for i, convs in enumerate([(0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28)])
    ]
    + _each("classifier"),
    "vit_b_16": [
        Block("embedding", ("class_token", "conv_proj", "encoder.pos_embedding")),
        *_each(*(f"encoder.layers.encoder_layer_{i}" for i in range(12))),
        Block("head", ("encoder.ln", "heads")),
    ],
    **{f"efficientnet_lite{level}": _efficientnet_lite_blocks() for level in range(3)},
}


def _stateful(module: nn.Module) -> bool:
    return any(True for _ in module.state_dict())


def default_blocks(network: nn.Module) -> list[Block]:
    """The network's children in registration order, containers (Sequential, ModuleList) opened one level;
    tensors held by the network itself come first."""
    blocks = [
        Block(name, (name,))
        for name in [*dict(network.named_parameters(recurse=False)), *dict(network.named_buffers(recurse=False))]
    ]
    for name, child in network.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            blocks += [
                Block(f"{name}.{inner}", (f"{name}.{inner}",))
                for inner, grandchild in child.named_children()
                if _stateful(grandchild)
            ]
        elif _stateful(child):
            blocks.append(Block(name, (name,)))
    return blocks


def parse_blocks(text: str, network: nn.Module) -> list[Block]:
    """``"conv_stem+bn1,blocks.0,blocks.1"``: comma-separated blocks, "+" joins modules into one block."""
    names = set(dict(network.named_modules())) | set(network.state_dict())
    blocks = []
    for entry in (part.strip() for part in text.split(",")):
        modules = tuple(name.strip() for name in entry.split("+"))
        unknown = [name for name in modules if name not in names]
        if not entry or unknown:
            raise UserError(
                f"--blocks: {', '.join(map(repr, unknown)) or 'an empty entry'} is not a module of the "
                f"backbone; name modules as in named_modules(), e.g. "
                f"{', '.join(block.label for block in default_blocks(network)[:6])}"
            )
        blocks.append(Block(entry, modules))
    return blocks


def blocks_for(name: str, network: nn.Module, text: str | None = None) -> list[Block]:
    """``--blocks`` when given, else the backbone's preset, else ``default_blocks``; each must own a tensor."""
    blocks = parse_blocks(text, network) if text else BLOCK_PRESETS.get(name) or default_blocks(network)
    keys = list(network.state_dict())
    empty = [block.label for block in blocks if not any(block.owns(key) for key in keys)]
    if empty:
        raise UserError(f"block(s) {', '.join(empty)} hold no weights in {name!r}; choose modules with parameters")
    return blocks


def fresh_network(name: str, seed: int) -> nn.Module:
    """A freshly initialised network of the named architecture, seeded (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network, _, _ = build_network(name, "random")
    return network


class CascadingRandomisation:
    """Randomises a network's blocks in place, cumulatively, from a fresh network's tensors."""

    def __init__(self, network: nn.Module, fresh: nn.Module):
        if is_folded(network):
            raise ValueError(
                "a network with folded BatchNorms cannot be randomised layer by layer; load it with fold=False"
            )
        self.live = network.state_dict()  # shares storage with the network's parameters and buffers
        self.fresh = fresh.state_dict()
        if [(k, v.shape) for k, v in self.live.items()] != [(k, v.shape) for k, v in self.fresh.items()]:
            raise UserError("the freshly initialised backbone does not match the loaded one (other layers or shapes)")
        self.original = {key: value.clone() for key, value in self.live.items()}

    @torch.no_grad()
    def randomise(self, block: Block) -> int:
        """Copy the block's fresh tensors in; returns how many values changed (0 if the fresh ones are equal)."""
        changed = 0
        for key, tensor in self.live.items():
            if block.owns(key):
                fresh = self.fresh[key].to(tensor.device, tensor.dtype)
                changed += int((tensor != fresh).sum())
                tensor.copy_(fresh)
        return changed

    @torch.no_grad()
    def restore(self) -> None:
        for key, tensor in self.live.items():
            tensor.copy_(self.original[key])


@contextmanager
def randomisable(network: nn.Module, name: str, seed: int) -> Iterator[CascadingRandomisation]:
    """A ``CascadingRandomisation`` of ``network`` (architecture ``name``); the weights are restored afterwards."""
    randomisation = CascadingRandomisation(network, fresh_network(name, seed))
    try:
        yield randomisation
    finally:
        randomisation.restore()
