"""Model-parameter randomisation test (MPRT): do a head's maps depend on the backbone's weights?

    python -m pipeline.sanity --head DIR (--split val|test | --images PATH...) [--protocol reevaluate|retrain]
                              [--blocks A+B,C,...] [--limit N] [--out DIR] [--seed S]

The backbone is randomised bottom-up (input first, as Hedström et al. recommend), block by block and
cumulatively; at every level the maps are compared with the original maps by SSIM (1 = identical, near 0 =
unrelated). Two protocols, named for what they test:

- ``reevaluate`` keeps the trained head. A P-TAME head reads only the auxiliary network, so the randomised
  backbone changes its maps only through the class it explains (the backbone's new prediction). This is
  what P-TAME's reference code did.
- ``retrain`` trains a new head (same config and seed) against each randomised backbone and compares its
  maps: the test that matters for a trained explainer. Its level 0 retrains on the intact backbone; where
  training is deterministic (the CPU) it reproduces the original maps exactly, so every later drop comes
  from the randomised weights, not from retraining.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from skimage.metrics import structural_similarity

from pipeline import cli
from pipeline.config import ExperimentConfig
from pipeline.data import build_splits
from pipeline.evaluate import EvalSet, add_source_arguments, load_eval_set
from pipeline.models.explainer import Explainer
from pipeline.models.randomisation import Block, blocks_for, randomisable
from pipeline.plots import sanity_figure
from pipeline.train import Models, Workbench, add_device_argument, load_explainer, train_head

Protocol = Literal["reevaluate", "retrain"]
PROTOCOLS: dict[str, str] = {
    "reevaluate": "the trained head is kept; the randomised backbone only changes which class is explained "
                  "(P-TAME's reference code)",
    "retrain": "a new head is trained against each randomised backbone (the test that matters for a trained "
               "explainer); level 0 retrains on the intact backbone with the same seed",
}
FIGURE_IMAGES = 3
ORIGINAL = "none (original)"


@dataclass
class Maps:
    """A head's maps for the backbone's current predictions."""

    saliency: torch.Tensor  # [N, H, W]
    classes: torch.Tensor  # [N]
    trained: torch.Tensor  # [N] bool


@torch.no_grad()
def explain_predictions(explainer: Explainer, images: torch.Tensor, batch_size: int, min_count: int) -> Maps:
    """Maps of the classes the explainer's backbone predicts now."""
    parts = [explainer.explain(batch, min_count=min_count) for batch in images.split(batch_size)]
    return Maps(torch.cat([p.saliency for p in parts]).cpu(), torch.cat([p.classes for p in parts]).cpu(),
                torch.cat([p.trained for p in parts]).cpu())


def ssim(original: torch.Tensor, other: torch.Tensor) -> np.ndarray:
    """SSIM per image of maps [N, H, W] in [0, 1] (skimage's 7 x 7 window, data range 1)."""
    return np.array([structural_similarity(a.double().numpy(), b.double().numpy(), data_range=1.0)
                     for a, b in zip(original, other)])


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
    coverage: float  # share of explained classes the head used at this level was trained on
    seconds: float


def _level(index: int, block: Block | None, changed: int, original: Maps, maps: Maps, seconds: float) -> Level:
    scores = ssim(original.saliency, maps.saliency)
    return Level(index, block.label if block else ORIGINAL, list(block.modules) if block else [], changed,
                 float(scores.mean()), float(scores.std()), scores.round(6).tolist(),
                 float((maps.classes != original.classes).double().mean()), float(maps.trained.double().mean()),
                 round(seconds, 3))


def head_factory(protocol: Protocol, explainer: Explainer, config: ExperimentConfig) -> Callable[[], Explainer]:
    """The head explaining each level: the trained one (reevaluate), or one trained anew (retrain)."""
    if protocol == "reevaluate":
        return lambda: explainer
    head = explainer.head
    models = Models(explainer.classifier, explainer.auxiliary, head.num_classes, head.channels,
                    explainer.classifier.mean.device)
    bench = Workbench(models, build_splits(config.data, explainer.classifier.preprocessing.input_size), config)
    return lambda: train_head(config, bench, progress=False).explainer


def run_mprt(explainer: Explainer, config: ExperimentConfig, evalset: EvalSet, blocks: Sequence[Block],
             protocol: Protocol, seed: int = 0, report: Callable[[Level], None] = lambda level: None
             ) -> tuple[list[Level], list[torch.Tensor]]:
    """SSIM of the original maps to the maps at every level; returns the levels and each level's maps."""
    batch, min_count = config.evaluation.batch_size, config.evaluation.min_class_count
    original = explain_predictions(explainer, evalset.images, batch, min_count)
    next_head = head_factory(protocol, explainer, config)
    levels, maps = [], []
    with randomisable(explainer.classifier.network, config.model.backbone, seed) as randomisation:
        for index, block in enumerate([None, *blocks]):
            started = time.perf_counter()
            changed = randomisation.randomise(block) if block else 0
            current = explain_predictions(next_head(), evalset.images, batch, min_count)
            levels.append(_level(index, block, changed, original, current, time.perf_counter() - started))
            maps.append(current.saliency)
            report(levels[-1])
    return levels, maps


def _line(level: Level) -> str:
    unchanged = level.level > 0 and level.values_changed == 0
    warning = "  (the fresh weights equal the loaded ones: nothing changed)" if unchanged else ""
    return (f"level {level.level:2d}  randomised up to {level.block:<22} SSIM {level.ssim_mean:.3f} ± "
            f"{level.ssim_std:.3f}  predictions changed {level.predictions_changed:6.1%}  "
            f"coverage {level.coverage:6.1%}  {level.seconds:6.1f} s{warning}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sanity", description=__doc__.splitlines()[0])
    parser.add_argument("--head", required=True, type=Path, help="folder written by pipeline.train")
    add_source_arguments(parser)
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="reevaluate")
    parser.add_argument("--blocks", help="comma-separated backbone blocks, input first; '+' joins modules "
                                         "(default: the backbone's preset)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random backbone weights")
    parser.add_argument("--out", type=Path, default=Path("sanity"), help="output folder")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    explainer, config = load_explainer(args.head, args.device)
    blocks = blocks_for(config.model.backbone, explainer.classifier.network, args.blocks)
    evalset = load_eval_set(explainer.classifier, config, args)
    print(f"MPRT, protocol {args.protocol}: {PROTOCOLS[args.protocol]}")
    print(f"cascading bottom-up randomisation of {config.model.backbone} over {len(blocks)} blocks: "
          + "; ".join(f"{b.label} = {'+'.join(b.modules)}" for b in blocks))
    started = time.perf_counter()
    levels, maps = run_mprt(explainer, config, evalset, blocks, args.protocol, args.seed,
                            report=lambda level: print(_line(level), flush=True))
    seconds = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"sanity_{args.protocol}"
    report = {"protocol": args.protocol, "protocol_description": PROTOCOLS[args.protocol],
              "order": "bottom-up, cascading", "similarity": "SSIM (skimage, 7x7 window, data range 1)",
              "head": str(args.head), "backbone": config.model.backbone, "source": args.split or "images",
              "images": len(evalset), "seed": args.seed, "seconds": round(seconds, 1),
              "levels": [asdict(level) for level in levels]}
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    shown = slice(0, min(FIGURE_IMAGES, len(evalset)))
    figure = sanity_figure([level.block for level in levels], [level.ssim_mean for level in levels],
                           [level.ssim_std for level in levels], evalset.images[shown].cpu(),
                           [level_maps[shown] for level_maps in maps], stem.with_suffix(".png"),
                           title=f"MPRT ({args.protocol}), {config.model.backbone}, {len(evalset)} images")
    print(f"{len(levels)} levels in {seconds:.1f} s; wrote {stem.with_suffix('.json')} and {figure}")
    return 0


if __name__ == "__main__":
    cli.run(main)
