"""A trial's evaluation on the demo, held in memory (as before) against blockwise, side by side in one run.

    python tests/benchmarks/eval_blockwise.py [--repeats 3] [--set KEY=VALUE ...]

Trains a demo head once (96 views), then alternates ``--repeats`` times: the in-memory path (the split's images
and all maps held, ROAD and AD/IC in one call each, as `evaluate_head` worked before it went blockwise) and the
blockwise `evaluate_head` (images read again block by block, maps made block by block). Prints the fastest of each,
their ratio and whether the scores are identical.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script from anywhere

from pipeline import config as configs
from pipeline.evaluation.scoring import evaluate_head, prepare_eval_set
from pipeline.metrics.adic import ad_ic
from pipeline.metrics.road import RoadProtocol, road
from pipeline.training.head_training import Workbench, train_head

REPO = Path(__file__).resolve().parents[2]


def fastest(work, repeats: int) -> tuple[float, object]:
    """The fewest seconds of ``repeats`` calls of ``work``, and its last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    config = configs.load(REPO / "experiments" / "demo.yaml", ["data.demo_train_views=96", *args.overrides])
    bench = Workbench.load(config)
    explainer = train_head(config, bench, progress=False).explainer
    classifier, settings = explainer.classifier, config.evaluation
    evalset = prepare_eval_set(classifier, bench.splits.val, settings.batch_size)
    print(
        f"demo: {len(evalset)} validation views of {evalset.size}, ROAD {settings.percentages} % removed, "
        f"{torch.get_num_threads()} torch threads; fastest of {args.repeats}"
    )

    def in_memory() -> dict[str, float]:
        images = evalset.first_images(len(evalset))
        with torch.no_grad():
            maps = torch.cat(
                [
                    explainer.explain(part, classes).saliency
                    for part, classes in zip(
                        images.split(settings.batch_size), evalset.targets.split(settings.batch_size)
                    )
                ]
            )
        generator = torch.Generator().manual_seed(settings.seed)
        scores = road(
            classifier, images, maps, evalset.targets, RoadProtocol.of(settings), settings.batch_size, generator
        ).metrics()
        return (
            scores
            | ad_ic(
                classifier, images, maps, evalset.targets, evalset.probabilities, batch_size=settings.batch_size
            ).metrics()
        )

    def blockwise() -> dict[str, float]:
        metrics = evaluate_head(explainer, evalset, settings)[0].metrics()
        return {key: value for key, value in metrics.items() if key != "class_coverage"}

    held_seconds = blockwise_seconds = float("inf")
    for _ in range(args.repeats):  # alternated, so both see the same machine load
        seconds, held = fastest(in_memory, 1)
        held_seconds = min(held_seconds, seconds)
        seconds, scores = fastest(blockwise, 1)
        blockwise_seconds = min(blockwise_seconds, seconds)
    print(f"{'evaluation':<40} {'in memory s':>12} {'blockwise s':>12} {'blockwise / in memory':>22}")
    print(
        f"{'head maps, ROAD, AD/IC':<40} {held_seconds:>12.2f} {blockwise_seconds:>12.2f} "
        f"{blockwise_seconds / held_seconds:>22.3f}"
    )
    print(f"scores identical: {held == scores}")


if __name__ == "__main__":
    main()
