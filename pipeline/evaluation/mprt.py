"""The model-parameter randomisation test (MPRT): a head's maps as the backbone is randomised block by block,
compared with the original maps by SSIM, under the ``reevaluate`` or ``retrain`` protocol; and a CA-Stream's maps
with the trained stream kept on the randomised backbone."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import nn

from pipeline.config import ExperimentConfig
from pipeline.data.sources import build_splits
from pipeline.evaluation.comparison import CastreamMaps
from pipeline.evaluation.scoring import EvalSet
from pipeline.models.castream_model import CAStreamModel
from pipeline.models.explainer import Explainer
from pipeline.models.loading import Models
from pipeline.models.randomisation import Block, randomisable
from pipeline.training.head_training import Workbench, train_head

PROTOCOLS: dict[str, str] = {
    "reevaluate": "the trained head is kept; the randomised backbone only changes which class is explained "
    "(P-TAME's reference code)",
    "retrain": "a new head is trained against each randomised backbone (the test that matters for a trained "
    "explainer); level 0 retrains on the intact backbone with the same seed",
}


ORIGINAL = "none (original)"


@dataclass
class Maps:
    """A head's maps for the backbone's current predictions."""

    saliency: torch.Tensor  # [N, H, W]
    classes: torch.Tensor  # [N]
    trained: torch.Tensor | None  # [N] bool; None for maps of any class (a CA-Stream's)


@torch.no_grad()
def explain_predictions(explainer: Explainer, evalset: EvalSet, batch_size: int, min_count: int) -> Maps:
    """Maps of the classes the explainer's backbone predicts now, for the split read ``batch_size`` images at a time."""
    parts = [explainer.explain(block.images, min_count=min_count) for block in evalset.blocks(batch_size)]
    return Maps(
        torch.cat([p.saliency for p in parts]).cpu(),
        torch.cat([p.classes for p in parts]).cpu(),
        torch.cat([p.trained for p in parts]).cpu(),
    )


def ssim(original: torch.Tensor, other: torch.Tensor) -> np.ndarray:
    """SSIM per image of maps [N, H, W] in [0, 1] (skimage's 7 x 7 window, data range 1)."""
    return np.array(
        [structural_similarity(a.double().numpy(), b.double().numpy(), data_range=1.0) for a, b in zip(original, other)]
    )


@dataclass
class Level:
    """One level of the cascade: everything up to and including ``block`` randomised."""

    level: int
    block: str
    modules: list[str]
    values_changed: int
    ssim_mean: float
    ssim_std: float
    ssim: list[float]
    predictions_changed: float  # share of images whose predicted class differs from the original
    coverage: float | None  # share of explained classes the head used at this level was trained on
    seconds: float


def _level(index: int, block: Block | None, changed: int, original: Maps, maps: Maps, seconds: float) -> Level:
    scores = ssim(original.saliency, maps.saliency)
    return Level(
        index,
        block.label if block else ORIGINAL,
        list(block.modules) if block else [],
        changed,
        float(scores.mean()),
        float(scores.std()),
        scores.round(6).tolist(),
        float((maps.classes != original.classes).double().mean()),
        None if maps.trained is None else float(maps.trained.double().mean()),
        round(seconds, 3),
    )


def head_factory(protocol: Protocol, explainer: Explainer, config: ExperimentConfig) -> Callable[[], Explainer]:
    """The head explaining each level: the trained one (reevaluate), or one trained anew (retrain)."""
    if protocol == "reevaluate":
        return lambda: explainer
    head = explainer.head
    models = Models(
        explainer.classifier, explainer.auxiliary, head.num_classes, head.channels, explainer.classifier.mean.device
    )
    bench = Workbench(models, build_splits(config.data, explainer.classifier.preprocessing.input_size), config)
    return lambda: train_head(config, bench, progress=False).explainer


def cascade(
    network: nn.Module,
    backbone: str,
    blocks: Sequence[Block],
    seed: int,
    original: Maps,
    explain: Callable[[], Maps],
    report: Callable[[Level], None],
) -> tuple[list[Level], list[torch.Tensor]]:
    """Randomise ``network`` block by block (cumulatively, the weights restored afterwards) and compare
    ``explain()``'s maps at every level, the intact one first, with ``original``."""
    levels, maps = [], []
    with randomisable(network, backbone, seed) as randomisation:
        for index, block in enumerate([None, *blocks]):
            started = time.perf_counter()
            changed = randomisation.randomise(block) if block else 0
            current = explain()
            levels.append(_level(index, block, changed, original, current, time.perf_counter() - started))
            maps.append(current.saliency)
            report(levels[-1])
    return levels, maps


def run_mprt(
    explainer: Explainer,
    config: ExperimentConfig,
    evalset: EvalSet,
    blocks: Sequence[Block],
    protocol: Protocol,
    seed: int = 0,
    report: Callable[[Level], None] = lambda level: None,
) -> tuple[list[Level], list[torch.Tensor]]:
    """SSIM of the original maps to the maps at every level; returns the levels and each level's maps."""
    batch, min_count = config.evaluation.batch_size, config.evaluation.min_class_count
    original = explain_predictions(explainer, evalset, batch, min_count)
    next_head = head_factory(protocol, explainer, config)
    return cascade(
        explainer.classifier.network,
        config.model.backbone,
        blocks,
        seed,
        original,
        lambda: explain_predictions(next_head(), evalset, batch, min_count),
        report,
    )


def run_castream_mprt(
    model: CAStreamModel,
    make_maps: CastreamMaps,
    config: ExperimentConfig,
    evalset: EvalSet,
    blocks: Sequence[Block],
    seed: int = 0,
    report: Callable[[Level], None] = lambda level: None,
) -> tuple[list[Level], list[torch.Tensor]]:
    """The MPRT of a CA-Stream's maps (``reevaluate``: the trained stream kept on the randomised backbone); each
    level explains the class the backbone predicts then."""

    def explain() -> Maps:
        saliency, classes = [], []
        for block in evalset.blocks(config.evaluation.batch_size):
            with torch.no_grad():
                classes.append(model.classifier(block.images).argmax(1))
            saliency.append(make_maps(block.images, classes[-1]).cpu())
        return Maps(torch.cat(saliency), torch.cat(classes).cpu(), None)

    return cascade(model.classifier.network, config.model.backbone, blocks, seed, explain(), explain, report)


Protocol = Literal["reevaluate", "retrain"]
