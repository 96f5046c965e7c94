"""Benchmark: ROAD's imputation alone, noisy linear against Telea inpainting, on the same images and masks.

The images are a trained head's validation split (the offline demo's, for a demo head), the masks
ROAD's (both orders, every percentage) from the head's maps; both imputers get ROAD's chunks of 8
images on the CPU. Prints seconds per imputed image for each imputer and their ratio.

    python tests/benchmarks/road_imputers.py --head DIR [--percentages 10 30 50 70] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script from anywhere

from pipeline.data.sources import build_splits
from pipeline.evaluation.scoring import head_maps, prepare_eval_set
from pipeline.metrics.road import _IMAGES_PER_CHUNK, RoadProtocol, road_masks
from pipeline.training.saved_head import load_explainer


def seconds_per_image(impute: Callable, images: torch.Tensor, masks: torch.Tensor) -> float:
    """Seconds per imputed image for ROAD's chunks: every image of a chunk under each of its masks."""
    started = time.perf_counter()
    for start in range(0, images.shape[0], _IMAGES_PER_CHUNK):
        chunk = slice(start, start + _IMAGES_PER_CHUNK)
        chunk_masks = masks[:, :, chunk]
        repeated = images[chunk].expand(*chunk_masks.shape[:2], *images[chunk].shape)
        impute(repeated.flatten(0, 2), chunk_masks.flatten(0, 2))
    return (time.perf_counter() - started) / masks[..., 0, 0].numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", type=Path, required=True, help="folder written by pipeline.train")
    parser.add_argument("--percentages", type=int, nargs="+", help="default: the head's evaluation.percentages")
    parser.add_argument("--repeats", type=int, default=3, help="timings per imputer; the fastest is reported")
    args = parser.parse_args()
    explainer, config = load_explainer(args.head, "cpu")
    settings = config.evaluation
    percentages = args.percentages or settings.percentages
    split = build_splits(config.data, explainer.classifier.preprocessing.input_size).val
    evalset = prepare_eval_set(explainer.classifier, split, settings.batch_size)
    block = next(evalset.blocks(len(evalset)))
    masks = road_masks(head_maps(explainer, settings.batch_size)(block), percentages)
    images = block.images
    print(
        f"{images.shape[0]} validation images of {tuple(images.shape[1:])}, {masks.shape[0] * masks.shape[1]} "
        f"masks each (percentages {percentages}), {torch.get_num_threads()} torch threads"
    )
    costs = {}
    with torch.inference_mode():
        for name in ("noisy_linear", "telea"):
            impute = RoadProtocol(imputer=name, noise=settings.noise).imputer_drawing_from(
                torch.Generator().manual_seed(settings.seed)
            )
            costs[name] = min(seconds_per_image(impute, images, masks) for _ in range(args.repeats))
            print(f"{name}: {costs[name] * 1000:.2f} ms per imputed image")
    print(f"telea / noisy_linear: {costs['telea'] / costs['noisy_linear']:.3f}")


if __name__ == "__main__":
    main()
