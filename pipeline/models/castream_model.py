"""CA-Stream (Torres et al., eqs. 4-10): a cross-attention stream that replaces global average pooling (GAP) of a
frozen CNN.

A learnable token ``q0`` meets the feature map ``F`` (p positions x d channels) of each attachment point:
``a = softmax(F q / sqrt(d))`` over positions (eq. 4), ``CA = F^T a`` (eq. 6), ``q_next = W CA`` (eq. 10), with no
query/key/value projections and one head. The last attachment point is always the input of the network's global
pooling module, and the last token replaces that module's output, so everything after it (flatten, the
classifier, a ConvNeXt head's LayerNorm) is the network's own, frozen.

The stream starts exactly as the original network: the projection into the last stage is zero (so the last
token is 0, the last attention is uniform and ``CA`` is GAP) and the last projection is the identity.

Attachment points are module names of the raw network (``Classifier.network``); presets cover torchvision's
``resnet50`` and its family (stem after ``maxpool``, ``layer1..4``), the offline ``efficientnet_lite0/1/2``
(EfficientNet-B0's layout on timm's modules: after ``bn1``, ``blocks.0..6``, ``bn2``) and timm ConvNeXt models
(after the stem, each downsampling and the last stage). Other networks name their points and pooling module themselves.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.models.classifiers import Classifier

# Points before the last stage; the last stage is the pooling module's input.
_RESNET = (["maxpool", "layer1", "layer2", "layer3"], "avgpool")
_LITE = (["bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6"], "global_pool")
_CONVNEXT = (["stem", "stages.1.downsample", "stages.2.downsample", "stages.3.downsample"], "head.global_pool")
STREAM_PRESETS: dict[str, tuple[list[str], str]] = {
    "efficientnet_lite0": _LITE,
    "efficientnet_lite1": _LITE,
    "efficientnet_lite2": _LITE,
}
# torchvision's ResNet family shares resnet50's module names.
_RESNET_FAMILY = ("resnet", "resnext", "wide_resnet")
# Networks whose classifier does not sit on a global average pooling: the stream has nothing to replace.
NO_GLOBAL_POOLING = {
    "vgg16": "it flattens a 7x7x512 tensor into fully connected layers",
    "vit_b_16": "it classifies a transformer's class token",
}


@dataclass(frozen=True)
class StreamLayout:
    """Where a stream attaches: ``points`` (module names before the last stage) and the global pooling module
    ``pool`` whose input is the last stage and whose output the last token replaces."""

    points: tuple[str, ...]
    pool: str

    def describe(self) -> str:
        return f"{', '.join(self.points)} -> input of {self.pool}"


def preset_layout(backbone: str) -> StreamLayout:
    """The preset layout for a backbone name; a UserError for networks without one."""
    bare = backbone.removeprefix("timm:")
    if bare in NO_GLOBAL_POOLING or backbone.startswith("timm:vit"):
        reason = NO_GLOBAL_POOLING.get(bare, "it classifies a transformer's class token")
        raise UserError(
            f"CA-Stream does not apply to {backbone!r}: it has no global average pooling to replace "
            f"({reason}); use a CNN with GAP before its classifier (resnet50, efficientnet_lite0, "
            "timm:convnext_*)"
        )
    if backbone.startswith("timm:convnext"):
        points, pool = _CONVNEXT
    elif backbone.startswith(_RESNET_FAMILY):
        points, pool = _RESNET
    elif backbone in STREAM_PRESETS:
        points, pool = STREAM_PRESETS[backbone]
    else:
        raise UserError(
            f"no CA-Stream preset for {backbone!r}; name its attachment points and its global pooling "
            "module with castream.points and castream.pool (module names of the network)"
        )
    return StreamLayout(tuple(points), pool)


def resolve_layout(backbone: str, points: Sequence[str] | None, pool: str | None) -> StreamLayout:
    """The config's points and pool where given, else the backbone's preset."""
    if points is not None and pool is not None:
        return StreamLayout(tuple(points), pool)
    preset = preset_layout(backbone)
    return StreamLayout(tuple(points) if points is not None else preset.points, pool or preset.pool)


def cross_attention(features: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 4 and 6 for ``features`` ``[B, d, h, w]`` and ``query`` ``[B, d]``: the pooled ``[B, d]`` and the
    attention ``[B, h, w]`` (a distribution over the positions of each image)."""
    batch, channels, height, width = features.shape
    flat = features.reshape(batch, channels, height * width)
    scores = torch.einsum("bdp,bd->bp", flat, query) / math.sqrt(channels)
    attention = scores.softmax(dim=1)
    pooled = torch.einsum("bdp,bp->bd", flat, attention)
    return pooled, attention.view(batch, height, width)


class CAStream(nn.Module):
    """The stream's parameters: the token ``q0`` and one projection per attachment point.

    ``widths`` are the channel counts of the points, the last one the pooling module's input (which is also
    the width of its output, the token the classifier reads)."""

    def __init__(self, widths: Sequence[int], seed: int = 0):
        super().__init__()
        if len(widths) < 1:
            raise ValueError("a stream needs at least one attachment point")
        self.widths = list(widths)
        generator = torch.Generator().manual_seed(seed)
        # The authors' ResNet stream draws its token from N(1, 1).
        self.token = nn.Parameter(1.0 + torch.randn(widths[0], generator=generator))
        targets = list(widths[1:]) + [widths[-1]]
        linears = [nn.Linear(width, target) for width, target in zip(widths, targets)]
        self.projections = nn.ModuleList(linears)
        with torch.no_grad():
            for projection in linears[:-2]:
                bound = math.sqrt(6.0 / (projection.in_features + projection.out_features))  # Xavier uniform
                projection.weight.uniform_(-bound, bound, generator=generator)
                projection.bias.zero_()
            if len(linears) > 1:  # into the last stage: token 0, so the last attention is uniform
                linears[-2].weight.zero_()
                linears[-2].bias.zero_()
            else:
                self.token.zero_()
            linears[-1].weight.copy_(torch.eye(widths[-1]))  # the last one: GAP passes unchanged
            linears[-1].bias.zero_()

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last token ``[B, d_L]`` and the attention of every point (``[B, h, w]`` each)."""
        if len(features) != len(self.widths):
            raise ValueError(f"expected {len(self.widths)} feature maps, got {len(features)}")
        query = self.token.expand(features[0].shape[0], -1)
        attentions = []
        for feature, projection in zip(features, self.projections):
            if feature.dtype in (torch.float16, torch.bfloat16):  # attention in full precision under autocast
                feature = feature.float()
            pooled, attention = cross_attention(feature.to(query.dtype), query)
            query = projection(pooled)
            attentions.append(attention)
        return query, attentions


@dataclass
class StreamOutput:
    logits: torch.Tensor  # the stream model's
    attentions: list[torch.Tensor]  # per attachment point, [B, h, w]
    original: torch.Tensor | None = None  # the unchanged network's logits, when asked for


class CAStreamModel(nn.Module):
    """A frozen classifier whose global pooling is replaced by a `CAStream`. Pixel-space images in, logits out.

    The classifier is not changed: hooks exist only while the stream model runs, so the same classifier still
    gives its own (GAP) logits when called directly."""

    def __init__(self, classifier: Classifier, layout: StreamLayout, stream: CAStream | None = None, seed: int = 0):
        super().__init__()
        self.classifier = classifier
        self.layout = layout
        modules = dict(classifier.network.named_modules())
        unknown = [name for name in (*layout.points, layout.pool) if name not in modules]
        if unknown:
            candidates = [n for n in modules if n and n.count(".") <= 1]
            raise UserError(
                f"{classifier.name!r} has no module(s) {', '.join(unknown)} to attach CA-Stream to; "
                "set castream.points / castream.pool to module names such as: "
                f"{', '.join(candidates[:40])}"
            )
        self._modules_at = [modules[name] for name in layout.points]
        self._pool = modules[layout.pool]
        widths = self._probe()
        if stream is None:
            stream = CAStream(widths, seed)
        elif stream.widths != widths:
            raise UserError(
                f"the stream's widths {stream.widths} do not fit {classifier.name!r} at "
                f"{layout.describe()} (widths {widths}); it was trained for another backbone"
            )
        self.stream = stream

    def _probe(self) -> list[int]:
        """Channel widths at the points and the pool's input; checks that the pool is a global average."""
        size = self.classifier.preprocessing.input_size
        parameter = next(self.classifier.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        seen: dict[str, torch.Tensor] = {}
        with self._hooks(seen, replace=None), torch.no_grad():
            self.classifier(images)
        if "pool_in" not in seen:
            raise UserError(
                f"the pooling module {self.layout.pool!r} of {self.classifier.name!r} never ran; "
                "castream.pool must name the global pooling before the classifier"
            )
        if len(seen["features"]) != len(self.layout.points) + 1:
            raise UserError(
                f"the CA-Stream points of {self.classifier.name!r} ran {len(seen['features']) - 1} times "
                f"for {len(self.layout.points)} points; name modules that run once per forward pass"
            )
        for name, feature in zip((*self.layout.points, self.layout.pool + " (input)"), seen["features"]):
            if feature.dim() != 4:
                raise UserError(
                    f"CA-Stream point {name!r} of {self.classifier.name!r} gives a {feature.dim()}-d "
                    "output, not a [B, C, H, W] feature map; name convolutional stages"
                )
        pool_in, pool_out = seen["pool_in"], seen["pool_out"]
        gap = pool_in.mean(dim=(2, 3))
        if pool_out.numel() != gap.numel() or not torch.allclose(pool_out.reshape(gap.shape), gap, atol=1e-5):
            raise UserError(
                f"{self.layout.pool!r} of {self.classifier.name!r} is not a global average pooling "
                f"(output {tuple(pool_out.shape)} from input {tuple(pool_in.shape)}); CA-Stream replaces "
                "GAP only"
            )
        return [feature.shape[1] for feature in seen["features"]]

    @contextmanager
    def _hooks(self, seen: dict, replace: bool | None) -> Iterator[None]:
        """Record the points' outputs and the pool's input; ``replace``: put the stream's token (and with
        ``True`` also the original GAP, as a second half of the batch) in place of the pool's output."""
        seen["features"] = []
        handles = [
            module.register_forward_hook(lambda _m, _i, out: seen["features"].append(out))
            for module in self._modules_at
        ]

        def before_pool(_module, inputs):
            seen["pool_in"] = inputs[0]
            seen["features"].append(inputs[0])

        def after_pool(_module, _inputs, output):
            seen["pool_out"] = output
            if replace is None:
                return None
            with torch.autocast(output.device.type, enabled=False):  # the stream is cheap: full precision
                token, seen["attentions"] = self.stream(seen["features"])
            token = token.to(output.dtype).reshape(output.shape)
            return torch.cat([token, output]) if replace else token

        handles.append(self._pool.register_forward_pre_hook(before_pool))
        handles.append(self._pool.register_forward_hook(after_pool))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def run(self, images: torch.Tensor, original: bool = False) -> StreamOutput:
        """Logits and attentions of the stream model; ``original=True`` also gives the unchanged network's logits
        from the same backbone pass (what follows the pooling runs on both halves of a doubled batch)."""
        seen: dict = {}
        with self._hooks(seen, replace=original):
            logits = self.classifier(images)
        if not original:
            return StreamOutput(logits, seen["attentions"])
        batch = images.shape[0]
        if logits.shape[0] != 2 * batch:
            raise UserError(
                f"{self.classifier.name!r} mixes images after its pooling; CA-Stream cannot run it "
                "beside the original in one pass"
            )
        return StreamOutput(logits[:batch], seen["attentions"], logits[batch:])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images).logits

    def train(self, mode: bool = True) -> CAStreamModel:
        """Only the stream changes mode; the frozen classifier stays in eval mode."""
        self.training = mode
        self.stream.train(mode)
        self.classifier.eval()
        return self


def parameter_count(stream: CAStream, trainable: bool = False) -> int:
    """The stream's parameters (``trainable``: only those that require gradients)."""
    return sum(parameter.numel() for parameter in stream.parameters() if parameter.requires_grad or not trainable)
