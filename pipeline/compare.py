"""Trained heads against baselines on the same metrics and images: ``python -m pipeline.compare``.

    python -m pipeline.compare --head DIR [--head DIR2 ...] (--split val|test | --images PATH...)
        [--methods gradcam,gradcam++,scorecam,ablationcam,rise,random,center] [--limit N] [--out DIR]
        [--target-layer NAME] [--rise-masks N] [--tracking-uri URI] [--search NAME]
        [--imputer noisy_linear|telea] [--percentages P...] [--castream DIR]

One row per head and per method: AD/IC at 100/50/15 % kept, ROAD MoRF/LeRF AUC, AG, Insertion and Deletion
AUC, the map resolution R, forward passes per explanation (counted with hooks), seconds per image and, for
heads, the coverage (share of images whose explained class the head was trained on). ``--castream DIR`` (a
stream of `pipeline.castream` for the same backbone) adds rows ca-gradcam, ca-gradcam++, ca-scorecam (those CAMs on
the stream model, for the ones in ``--methods``) and ca-attention (its last-stage attention), with the stream
model's top-1 agreement. Every row is scored by
the same functions, on the same images, for the same classes (the backbone's clean predictions), and ROAD under
one protocol: the first head's ``evaluation`` config, or ``--imputer``/``--percentages``; the output says which,
and says so when the heads' configs name different protocols.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from pipeline import cli
from pipeline.baselines.rise import RiseParameters
from pipeline.cli import RenamedOption, add_device_argument, add_road_arguments, add_source_arguments, road_overrides
from pipeline.errors import UserError
from pipeline.evaluation.comparison import (
    METHODS,
    Row,
    baseline_methods,
    castream_methods,
    head_methods,
    load_heads,
    load_stream_for,
    run_method,
)
from pipeline.evaluation.held_out import check_held_out
from pipeline.evaluation.scoring import load_eval_set
from pipeline.metrics.road import road_protocol_of
from pipeline.models.contributions import LayerContribution, layer_contributions
from pipeline.reports.comparison_report import _passes, conventions, protocol_notes, write_figure, write_outputs
from pipeline.tracking.runs import RunLog


def parse_methods(text: str) -> list[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise UserError(f"unknown method {unknown[0]!r} in --methods; choose from {','.join(METHODS)}")
    return list(dict.fromkeys(names))


def metric_key(name: str) -> str:
    """An MLflow-safe metric prefix: "gradcam++" -> "gradcampp", "P-TAME (head)" -> "P-TAME_head"."""
    return re.sub(r"[^A-Za-z0-9_.\-/]+", "_", name.replace("+", "p")).strip("_")


def log_comparison(
    run: RunLog, rows: Sequence[Row], contributions: dict[str, list[LayerContribution]], files: Sequence[Path]
) -> None:
    metrics: dict[str, float] = {}
    for row in rows:
        values = row.metrics | {
            "resolution": row.resolution,
            "forward_passes": row.forward_passes,
            "seconds_per_image": row.seconds_per_image,
        }
        values |= {key: getattr(row, key) for key in ("coverage", "agreement") if getattr(row, key) is not None}
        metrics |= {f"{metric_key(row.method)}.{key}": value for key, value in values.items()}
    for name, entries in contributions.items():
        metrics |= {f"{metric_key(name)}.contribution.{c.layer}": c.contribution for c in entries}
    run.log_metrics(metrics)
    for path in files:
        run.log_artifact(path, "comparison")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.compare", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--head",
        required=True,
        action="append",
        type=Path,
        help="folder written by pipeline.train (repeatable; all must explain the same backbone)",
    )
    add_source_arguments(parser)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {','.join(METHODS)}")
    parser.add_argument(
        "--castream",
        "--ca-stream",
        type=Path,
        action=RenamedOption,
        help="add the CA rows of this CA-Stream (pipeline.castream's folder): ca-<CAM> for the "
        "Grad-CAM, Grad-CAM++ and Score-CAM of --methods, and ca-attention",
    )
    parser.add_argument("--target-layer", help="module of the backbone the CAMs read (default: the backbone's preset)")
    parser.add_argument("--rise-masks", type=int, default=RiseParameters.masks, help="RISE's N (default 8000)")
    parser.add_argument("--out", type=Path, default=Path("comparison"), help="output folder")
    cli.add_tracking_arguments(parser, "the comparison")
    add_road_arguments(parser)
    add_device_argument(parser)
    args = parser.parse_args(argv)
    args.methods = parse_methods(args.methods)
    if args.rise_masks < 1:
        parser.error(f"--rise-masks {args.rise_masks}: give a positive number of masks")
    cli.check_tracking(args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    heads = load_heads(args.head, args.device, road_overrides(args))
    _, first, config = heads[0]
    road_notes = protocol_notes(heads)
    print("\n".join(road_notes), flush=True)
    classifier = first.classifier
    rise = RiseParameters(masks=args.rise_masks, batch_size=config.evaluation.batch_size)
    methods = head_methods(heads) + baseline_methods(
        args.methods, classifier, args.target_layer, config.evaluation.batch_size, rise
    )
    if args.castream:
        stream = load_stream_for(args.castream, config, args.device)
        methods += castream_methods(stream, args.methods, args.target_layer, config.evaluation.batch_size)
    evalset = load_eval_set(classifier, config, args.split, args.images, args.limit)
    trained = [directory for directory, _, _ in heads] + ([args.castream] if args.castream else [])
    held_out = check_held_out(trained, evalset.dataset, args.split, args.allow_changed_split, args.allow_seen)
    layers = {m.name: m.target_layer for m in methods if m.target_layer is not None}
    header = {
        "backbone": config.model.backbone,
        "source": args.split or "images",
        "images": len(evalset),
        "held_out": held_out.to_json(),
        "heads": [str(directory) for directory, _, _ in heads],
        "methods": args.methods,
        "target_layers": layers,
        "rise": asdict(rise),
        "road_protocol": road_protocol_of(config.evaluation),
        "castream": str(args.castream) if args.castream else None,
    }
    run = cli.start_tracking(args, "comparison", header)
    with run if run is not None else contextlib.nullcontext():  # a failure marks the MLflow run FAILED
        rows, maps = [], {}
        started = time.perf_counter()
        for method in methods:
            row, maps[method.name] = run_method(method, classifier, evalset, config)
            rows.append(row)
            print(
                f"{method.name}: {row.seconds_per_image:.3f} s and {_passes(row)} forward passes per map, "
                f"scored in {row.details['scoring_seconds']:.1f} s",
                flush=True,
            )
        contributions = {
            m.name: layer_contributions(m.explainer, m.config.evaluation.min_class_count)
            for m in methods
            if m.explainer is not None and m.config is not None
        }
        notes = conventions(evalset, rise, layers, castream=args.castream is not None) + road_notes
        if held_out.note:
            notes.insert(0, held_out.note)
        header["seconds"] = round(time.perf_counter() - started, 1)
        files = write_outputs(rows, contributions, notes, header, args.out)
        files.append(write_figure(evalset, classifier, maps, rows, methods, args.out / "maps.png"))
        if run is not None:
            log_comparison(run, rows, contributions, files)
    print(files[0].read_text())
    print(f"{len(rows)} rows on {len(evalset)} images in {header['seconds']:.0f} s; wrote {', '.join(map(str, files))}")
    return 0


if __name__ == "__main__":
    cli.run(main)
