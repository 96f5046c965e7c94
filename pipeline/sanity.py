"""Model-parameter randomisation test (MPRT): do a head's maps depend on the backbone's weights?

    python -m pipeline.sanity (--head DIR | --castream DIR [--castream-maps attention|gradcam|gradcam++|scorecam]
                              [--target-layer NAME]) (--split val|test | --images PATH...)
                              [--protocol reevaluate|retrain] [--blocks A+B,C,...] [--limit N] [--out DIR] [--seed S]

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
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from pipeline import cli
from pipeline.cli import RenamedOption, add_device_argument, add_source_arguments
from pipeline.evaluation.comparison import CA_METHODS, castream_maps
from pipeline.evaluation.held_out import check_held_out
from pipeline.evaluation.mprt import PROTOCOLS, Level, run_castream_mprt, run_mprt
from pipeline.evaluation.scoring import load_eval_set
from pipeline.models.randomisation import blocks_for
from pipeline.reports.plots import sanity_figure
from pipeline.training.castream_training import load_castream
from pipeline.training.saved_head import load_explainer

FIGURE_IMAGES = 3
CASTREAM_PROTOCOL = (
    "the trained stream is kept on the randomised backbone: its maps change through the randomised "
    "features and the class the backbone predicts"
)


def _line(level: Level) -> str:
    unchanged = level.level > 0 and level.values_changed == 0
    warning = "  (the fresh weights equal the loaded ones: nothing changed)" if unchanged else ""
    return (
        f"level {level.level:2d}  randomised up to {level.block:<22} SSIM {level.ssim_mean:.3f} ± "
        f"{level.ssim_std:.3f}  predictions changed {level.predictions_changed:6.1%}  "
        f"coverage {'   n/a' if level.coverage is None else format(level.coverage, '6.1%')}  "
        f"{level.seconds:6.1f} s{warning}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sanity", description=__doc__.splitlines()[0])
    explained = parser.add_mutually_exclusive_group(required=True)
    explained.add_argument("--head", type=Path, help="folder written by pipeline.train")
    explained.add_argument(
        "--castream", "--ca-stream", type=Path, action=RenamedOption, help="folder written by pipeline.castream"
    )
    parser.add_argument(
        "--castream-maps",
        "--ca-maps",
        action=RenamedOption,
        choices=["attention", *CA_METHODS],
        default="attention",
        help="the CA-Stream's maps to test (default: its raw last-stage attention)",
    )
    parser.add_argument(
        "--target-layer", help="CAM layer for --castream-maps gradcam/gradcam++/scorecam (default: preset)"
    )
    add_source_arguments(parser)
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="reevaluate")
    parser.add_argument(
        "--blocks",
        help="comma-separated backbone blocks, input first; '+' joins modules (default: the backbone's preset)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random backbone weights")
    parser.add_argument("--out", type=Path, default=Path("sanity"), help="output folder")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    if args.castream and args.protocol != "reevaluate":
        parser.error(
            f"--protocol {args.protocol} with --castream: a stream is tested with its trained weights kept "
            "(--protocol reevaluate)"
        )
    if args.castream:
        stream, config = load_castream(args.castream, args.device)
        classifier = stream.classifier
        make_maps = castream_maps(stream, args.castream_maps, args.target_layer, config.evaluation.batch_size)[0]
    else:
        explainer, config = load_explainer(args.head, args.device, fold=False)  # its layers get randomised
        classifier = explainer.classifier
    blocks = blocks_for(config.model.backbone, classifier.network, args.blocks)
    evalset = load_eval_set(classifier, config, args.split, args.images, args.limit)
    held_out = check_held_out(
        [args.castream or args.head], evalset.dataset, args.split, args.allow_changed_split, args.allow_seen
    )
    if held_out.note:
        print(held_out.note)
    what = f"CA-Stream {args.castream_maps} maps" if args.castream else "head maps"
    description = CASTREAM_PROTOCOL if args.castream else PROTOCOLS[args.protocol]
    print(f"MPRT of {what}, protocol {args.protocol}: {description}")
    print(
        f"cascading bottom-up randomisation of {config.model.backbone} over {len(blocks)} blocks: "
        + "; ".join(f"{b.label} = {'+'.join(b.modules)}" for b in blocks)
    )
    started = time.perf_counter()

    def print_level(level: Level) -> None:
        print(_line(level), flush=True)

    if args.castream:
        levels, maps = run_castream_mprt(stream, make_maps, config, evalset, blocks, args.seed, print_level)
    else:
        levels, maps = run_mprt(explainer, config, evalset, blocks, args.protocol, args.seed, print_level)
    seconds = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"sanity_{args.protocol}"
    report = {
        "protocol": args.protocol,
        "protocol_description": description,
        "order": "bottom-up, cascading",
        "similarity": "SSIM (skimage, 7x7 window, data range 1)",
        "head": str(args.head) if args.head else None,
        "castream": {"folder": str(args.castream), "maps": args.castream_maps} if args.castream else None,
        "backbone": config.model.backbone,
        "source": args.split or "images",
        "held_out": held_out.to_json(),
        "images": len(evalset),
        "seed": args.seed,
        "seconds": round(seconds, 1),
        "levels": [asdict(level) for level in levels],
    }
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    shown = slice(0, min(FIGURE_IMAGES, len(evalset)))
    figure = sanity_figure(
        [level.block for level in levels],
        [level.ssim_mean for level in levels],
        [level.ssim_std for level in levels],
        evalset.first_images(FIGURE_IMAGES),
        [level_maps[shown] for level_maps in maps],
        stem.with_suffix(".png"),
        title=f"MPRT ({args.protocol}) of {what}, {config.model.backbone}, {len(evalset)} images",
    )
    print(f"{len(levels)} levels in {seconds:.1f} s; wrote {stem.with_suffix('.json')} and {figure}")
    return 0


if __name__ == "__main__":
    cli.run(main)
