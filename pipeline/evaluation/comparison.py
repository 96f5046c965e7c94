"""The rows of a comparison: trained heads, baselines (Grad-CAM family, RISE, trivial maps) and CA-Stream rows
(CAMs of a stream model, its raw attention) make maps for the same images and classes, block by block as the split
is read (blockwise), timed and with their forward passes counted, and are scored by the same code."""

from __future__ import annotations

import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.baselines.cam import CAM_METHODS, CamMethod
from pipeline.baselines.rise import RiseParameters, rise_saliency
from pipeline.config import ExperimentConfig
from pipeline.errors import UserError
from pipeline.evaluation.scoring import (
    EvalSet,
    MapKind,
    MapMaker,
    PerImage,
    SplitBlock,
    evaluate_maps,
    head_maps,
    reference_maker,
)
from pipeline.metrics.faithfulness import faithfulness_probabilities, faithfulness_result
from pipeline.models.castream_model import CAStreamModel
from pipeline.models.classifiers import Classifier
from pipeline.models.coverage import ClassCoverage
from pipeline.models.explainer import Explainer
from pipeline.training.castream_training import load_castream
from pipeline.training.saved_head import load_explainer


@dataclass
class Method:
    """One row's way to make maps for a block of a split, and the networks whose forward passes it pays for."""

    name: str
    kind: Kind
    resolution: int
    make_maps: MapMaker
    backbone: nn.Module | None  # counted as forward passes per explanation
    auxiliary: nn.Module | None = None  # heads: the auxiliary network's passes, counted separately
    explainer: Explainer | None = None  # heads: both the explainer and its config; other rows: neither
    config: ExperimentConfig | None = None
    target_layer: str | None = None  # CAMs: the backbone module they read
    stream: CAStreamModel | None = None  # CA rows: the stream model whose top-1 agreement the row reports


class ForwardCounter:
    """Counts the images that go through a module's forward while ``counting`` (a forward hook); a context
    manager."""

    def __init__(self, module: nn.Module | None):
        self.images = 0
        self.counting = False
        self._handle = module.register_forward_hook(self._count) if module is not None else None

    def _count(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        if self.counting:
            self.images += inputs[0].shape[0]

    def __enter__(self) -> ForwardCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()


@dataclass
class Row:
    method: str
    kind: Kind
    metrics: dict[str, float]
    resolution: int
    forward_passes: float
    auxiliary_passes: float | None
    seconds_per_image: float
    coverage: float | None  # heads only: baselines explain any class
    agreement: float | None = None  # CA rows only: share of images where the stream model's top-1 is the backbone's
    details: dict[str, Any] = field(default_factory=dict)

    def value(self, key: str) -> float | None:
        return self.metrics[key] if key in self.metrics else getattr(self, key)


def head_resolution(explainer: Explainer) -> int:
    """Cells of the head's map before upsampling: the largest auxiliary feature map."""
    size = explainer.classifier.preprocessing.input_size
    with torch.no_grad():
        features = explainer.auxiliary(torch.zeros(1, 3, size, size, device=explainer.classifier.mean.device))
    return max(f.shape[-2] * f.shape[-1] for f in features)


def head_methods(heads: Sequence[tuple[Path, Explainer, ExperimentConfig]]) -> list[Method]:
    """One row per head: "P-TAME (folder)", or "T-TAME (folder)" for a head on the backbone's own layers."""
    names = [directory.name for directory, _, _ in heads]
    if len(set(names)) < len(names):
        names = [str(directory) for directory, _, _ in heads]
    methods = []
    for name, (_, explainer, config) in zip(names, heads):
        kind = "T-TAME" if config.model.auxiliary == "backbone" else "P-TAME"
        methods.append(
            Method(
                f"{kind} ({name})",
                "head",
                head_resolution(explainer),
                head_maps(explainer, config.evaluation.batch_size, predict=True),
                explainer.classifier,
                explainer.auxiliary,
                explainer,
                config,
            )
        )
    return methods


@dataclass(frozen=True)
class BaselineInputs:
    """What every baseline is built from: the explained classifier, the CAM target layer asked for (None: the
    backbone's default), the batch size and RISE's settings."""

    classifier: Classifier
    target_layer: str | None
    batch_size: int
    rise: RiseParameters


BaselineBuilder = Callable[[str, BaselineInputs], Method]
BASELINES: dict[str, BaselineBuilder] = {}  # `compare --methods` names -> the builder of that row


def baseline(*names: str) -> Callable[[BaselineBuilder], BaselineBuilder]:
    """Register a builder of baseline rows under ``names``: a new baseline is one decorated function."""

    def register(builder: BaselineBuilder) -> BaselineBuilder:
        for name in names:
            if name in BASELINES:
                raise ValueError(f"baseline {name!r} is registered twice")
            BASELINES[name] = builder
        return builder

    return register


@baseline(*CAM_METHODS)
def _cam_row(name: str, inputs: BaselineInputs) -> Method:
    cam = CamMethod(name, inputs.classifier, inputs.target_layer, inputs.batch_size)
    return Method(
        name,
        "baseline",
        cam.resolution,
        lambda block: cam(block.images, block.targets),
        inputs.classifier,
        target_layer=cam.layer_name,
    )


@baseline("rise")
def _rise_row(name: str, inputs: BaselineInputs) -> Method:
    return Method(
        name,
        "baseline",
        inputs.rise.cells**2,
        lambda block: rise_saliency(inputs.classifier, block.images, block.targets, inputs.rise),
        inputs.classifier,
    )


@baseline("random", "center")
def _reference_row(name: str, inputs: BaselineInputs) -> Method:
    return Method(
        name,
        "reference",
        inputs.classifier.preprocessing.input_size**2,
        reference_maker(typing.cast(MapKind, name)),
        None,
    )


def baseline_methods(
    names: Sequence[str], classifier: Classifier, target_layer: str | None, batch_size: int, rise: RiseParameters
) -> list[Method]:
    """The requested baselines, by their registered builders; CAM target layers are resolved (and checked) here,
    before any work."""
    inputs = BaselineInputs(classifier, target_layer, batch_size, rise)
    return [BASELINES[name](name, inputs) for name in names]


CA_METHODS = ("gradcam", "gradcam++", "scorecam")
CastreamMaps = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, classes) -> maps [N, H, W]


@torch.no_grad()
def castream_attention_maps(model: CAStreamModel, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The stream's raw last-stage attention, bilinearly upsampled to the images and min-max scaled: [N, H, W]."""
    attention = torch.cat([model.run(batch).attentions[-1] for batch in images.split(batch_size)])
    maps = F.interpolate(attention[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low, high = maps.flatten(1).amin(1).view(-1, 1, 1), maps.flatten(1).amax(1).view(-1, 1, 1)
    return (maps - low) / (high - low).clamp_min(1e-12)


def castream_maps(
    model: CAStreamModel, name: str, target_layer: str | None, batch_size: int
) -> tuple[CastreamMaps, int, str | None]:
    """Map maker ``name`` of a stream model (``gradcam``, ``gradcam++``, ``scorecam`` on the stream model at the
    backbone's CAM layer, the last conv stage that the stream pools; or ``attention``, class-agnostic), with its
    resolution and CAM layer."""
    if name == "attention":
        size = model.classifier.preprocessing.input_size
        with torch.no_grad():
            probe = model.run(torch.zeros(1, 3, size, size, device=model.classifier.mean.device))
        return (
            lambda images, _classes: castream_attention_maps(model, images, batch_size),
            probe.attentions[-1][0].numel(),
            None,
        )
    if name not in CA_METHODS:
        raise UserError(f"no CA-Stream map {name!r}; choose from {', '.join((*CA_METHODS, 'attention'))}")
    cam = CamMethod(name, model.classifier, target_layer, batch_size, model=model)
    return cam, cam.resolution, cam.layer_name


def castream_methods(
    model: CAStreamModel, names: Sequence[str], target_layer: str | None, batch_size: int
) -> list[Method]:
    """The CA rows: those of Grad-CAM, Grad-CAM++ and Score-CAM that ``names`` asks for, and ca-attention."""
    methods = []
    for name in [name for name in CA_METHODS if name in names] + ["attention"]:
        make, resolution, layer = castream_maps(model, name, target_layer, batch_size)

        def on_block(block: SplitBlock, make: CastreamMaps = make) -> torch.Tensor:
            return make(block.images, block.targets)

        methods.append(
            Method(
                f"ca-{name}",
                "castream",
                resolution,
                on_block,
                model.classifier,
                target_layer=layer,
                stream=model,
            )
        )
    return methods


@torch.no_grad()
def castream_agreement(model: CAStreamModel, evalset: EvalSet, batch_size: int) -> float:
    """Share of the eval set's images whose stream-model top-1 is the backbone's (its explained class)."""
    agreeing = sum(int((model(block.images).argmax(1) == block.targets).sum()) for block in evalset.blocks(batch_size))
    return agreeing / len(evalset)


def run_method(
    method: Method, classifier: Classifier, evalset: EvalSet, config: ExperimentConfig
) -> tuple[Row, torch.Tensor]:
    """Make each block's maps (timed, forward passes counted) and score them like every other row; returns the row
    and the maps of the split's first images."""
    count, batch_size = len(evalset), config.evaluation.batch_size
    making, faithful = 0.0, PerImage(count)
    with ForwardCounter(method.backbone) as backbone, ForwardCounter(method.auxiliary) as auxiliary:

        def make(block: SplitBlock) -> torch.Tensor:
            nonlocal making
            started = time.perf_counter()
            backbone.counting = auxiliary.counting = True
            maps = method.make_maps(block)
            if maps.is_cuda:  # the head's maps come without a host sync: wait for the queued kernels
                torch.cuda.synchronize(maps.device)
            backbone.counting = auxiliary.counting = False
            making += time.perf_counter() - started
            return maps

        def score_faithfulness(block: SplitBlock, maps: torch.Tensor) -> None:
            faithful.put(
                block.first,
                faithfulness_probabilities(classifier, block.images, maps, block.targets, batch_size=batch_size),
            )

        started = time.perf_counter()
        evaluation, shown = evaluate_maps(classifier, evalset, make, config.evaluation, also=score_faithfulness)
        scoring = time.perf_counter() - started - making
    measures = faithfulness_result(evalset.probabilities, faithful.columns, evalset.size)
    coverage = None
    if method.explainer is not None and method.config is not None:
        coverage = ClassCoverage.of(method.explainer.head, method.config.evaluation.min_class_count).fraction(
            evalset.targets
        )
    agreement = None
    if method.stream is not None:
        agreement = castream_agreement(method.stream, evalset, config.evaluation.batch_size)
    row = Row(
        method.name,
        method.kind,
        evaluation.metrics() | measures.metrics(),
        method.resolution,
        backbone.images / count,
        auxiliary.images / count if method.auxiliary is not None else None,
        making / count,
        coverage,
        agreement,
        {
            "road": asdict(evaluation.road),
            "adic": asdict(evaluation.adic),
            "insertion": asdict(measures.insertion),
            "deletion": asdict(measures.deletion),
            "scoring_seconds": round(scoring, 3),
        },
    )
    return row, shown


def load_heads(
    directories: Sequence[Path], device: str, overrides: Sequence[str] = ()
) -> list[tuple[Path, Explainer, ExperimentConfig]]:
    """Every head (``overrides`` as ``--set``), checked to explain the same backbone (same name and weights)."""
    if len(set(map(Path.resolve, directories))) < len(directories):
        raise UserError("the same --head folder is given twice; give each head once")
    heads = [(directory, *load_explainer(directory, device, overrides)) for directory in directories]
    first_dir, _, first = heads[0]
    for directory, _, config in heads[1:]:
        mine, theirs = (
            (first.model.backbone, first.model.backbone_weights),
            (config.model.backbone, config.model.backbone_weights),
        )
        if mine != theirs:
            raise UserError(
                f"the heads explain different backbones: {first_dir} explains {mine[0]} "
                f"(weights {mine[1] or 'library'}), {directory} explains {theirs[0]} "
                f"(weights {theirs[1] or 'library'}); compare heads of one backbone at a time"
            )
    return heads


METHODS = tuple(BASELINES)  # in registration order: the CAM family, rise, random, center


Kind = Literal["head", "baseline", "reference", "castream"]


def load_stream_for(directory: Path, config: ExperimentConfig, device: str) -> CAStreamModel:
    """The CA-Stream saved in ``directory``, checked to be trained for the backbone (name and weights) of ``config``."""
    model, stream_config = load_castream(directory, device)
    mine = (config.model.backbone, config.model.backbone_weights)
    theirs = (stream_config.model.backbone, stream_config.model.backbone_weights)
    if mine != theirs:
        raise UserError(
            f"--castream {directory} was trained for {theirs[0]} (weights {theirs[1] or 'library'}), but "
            f"the heads explain {mine[0]} (weights {mine[1] or 'library'}); train a stream for that "
            "backbone with `python -m pipeline.castream`"
        )
    return model
