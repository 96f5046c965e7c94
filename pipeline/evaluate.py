"""Faithfulness of a trained head: ROAD MoRF/LeRF and AD/IC on a split or on your own images.

    python -m pipeline.evaluate --head DIR (--split val|test | --images PATH...) [--limit N]
                                [--maps head|random|center] [--imputer noisy_linear|telea]
                                [--percentages P...] [--out FILE.json] [--allow-changed-split] [--allow-seen]

``--maps random|center`` scores trivial reference maps instead of the head, so a score has a yardstick.
ROAD follows the head's ``evaluation`` config (imputer, percentages) unless ``--imputer``/``--percentages``
override it; the summary line and the JSON name the protocol used. The images are checked against the head's
``splits.json`` (`pipeline.evaluation.held_out`): a changed split or images the head trained or was selected on
are refused unless allowed, and then marked in the JSON (``held_out``) and on the console.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from pipeline import cli
from pipeline.cli import add_device_argument, add_road_arguments, add_source_arguments, road_overrides
from pipeline.evaluation.held_out import check_held_out
from pipeline.evaluation.scoring import evaluate_head, load_eval_set, summary_line
from pipeline.reports.plots import road_curve
from pipeline.training.saved_head import load_explainer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--head", required=True, type=Path, help="folder written by pipeline.train")
    add_source_arguments(parser)
    parser.add_argument("--maps", choices=["head", "random", "center"], default="head")
    parser.add_argument("--out", type=Path, default=Path("evaluation.json"), help="metrics JSON (+ .png curve)")
    parser.add_argument(
        "--min-count",
        type=int,
        help="training images a class needs to count as trained (default: the head's evaluation.min_class_count)",
    )
    add_road_arguments(parser)
    add_device_argument(parser)
    args = parser.parse_args(argv)
    overrides = road_overrides(args)
    if args.min_count is not None:
        overrides.append(f"evaluation.min_class_count={args.min_count}")
    explainer, config = load_explainer(args.head, args.device, overrides)
    evalset = load_eval_set(explainer.classifier, config, args.split, args.images, args.limit)
    held_out = check_held_out([args.head], evalset.dataset, args.split, args.allow_changed_split, args.allow_seen)
    evaluation, _ = evaluate_head(explainer, evalset, config.evaluation, args.maps, progress=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = evaluation.to_json() | {
        "maps": args.maps,
        "head": str(args.head),
        "split": args.split or "images",
        "held_out": held_out.to_json(),
        "evaluation": asdict(config.evaluation),
    }
    args.out.write_text(json.dumps(report, indent=2))
    curve = road_curve(
        evaluation.road.percentages,
        evaluation.road.morf,
        evaluation.road.lerf,
        evaluation.road.morf_auc,
        evaluation.road.lerf_auc,
        args.out.with_suffix(".png"),
        title=f"ROAD, {args.maps} maps, {config.model.backbone}\n{evaluation.road.protocol}",
    )
    print(summary_line(evaluation))
    if held_out.note:
        print(held_out.note)
    print(f"wrote {args.out} and {curve}")
    return 0


if __name__ == "__main__":
    cli.run(main)
