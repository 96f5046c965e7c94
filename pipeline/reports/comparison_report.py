"""A comparison's outputs: the Markdown table (with its conventions and the ROAD protocol), CSV, JSON and the
figure of maps side by side."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pipeline.baselines.rise import RiseParameters
from pipeline.config import ExperimentConfig
from pipeline.evaluation.comparison import Method, Row
from pipeline.evaluation.scoring import EvalSet
from pipeline.metrics.faithfulness import ROWS_PER_STEP
from pipeline.metrics.road import road_protocol_of
from pipeline.models.classifiers import Classifier
from pipeline.models.contributions import LayerContribution
from pipeline.models.coverage import ClassCoverage
from pipeline.models.explainer import Explainer
from pipeline.reports.plots import method_grid


def _cell(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if digits else f"{value:g}"


def _passes(row: Row) -> str:
    backbone = _cell(row.forward_passes, 0)
    return backbone if row.auxiliary_passes is None else f"{backbone} + {_cell(row.auxiliary_passes, 0)} aux"


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| method | " + " | ".join(header for header, _, _ in COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for row in rows:
        cells = [
            _passes(row) if key == "forward_passes" else _cell(row.value(key), digits) for _, key, digits in COLUMNS
        ]
        lines.append(f"| {row.method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def contributions_table(contributions: Sequence[LayerContribution]) -> str:
    lines = [
        "| layer | channels | channel share | contribution (all classes) | contribution (trained classes) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {c.layer} | {c.channels} | {c.channel_share:.2%} | {c.contribution:.2%} | "
        f"{'n/a' if c.contribution_trained is None else f'{c.contribution_trained:.2%}'} |"
        for c in contributions
    ]
    return "\n".join(lines)


def conventions(evalset: EvalSet, rise: RiseParameters, layers: dict[str, str], castream: bool = False) -> list[str]:
    width = evalset.size[1]
    cam_layers = ", ".join(f"{name}: {layer}" for name, layer in layers.items()) or "none"
    notes = [
        "Scores are softmax probabilities (ROAD: accuracy) of the class the backbone predicts on the clean image; "
        "every map masks pixel space (removed pixels go black; ROAD imputes them).",
        "AD/IC/AG in %, ROAD/Insertion/Deletion as AUC. Insertion starts from the image blurred (Gaussian 11, "
        f"sigma 5), Deletion replaces pixels by black; {ROWS_PER_STEP * width} px per step.",
        f"R = map cells before upsampling. Forward passes are counted per explanation. CAM target layers: "
        f"{cam_layers}; RISE: N = {rise.masks}, s = {rise.cells}, p1 = {rise.keep}, seed {rise.seed}.",
        "Coverage = share of images whose explained class the head was trained on (maps of untrained classes are "
        "the head's random initial rows); n/a for baselines, which explain any class.",
    ]
    if castream:
        notes.append(
            "ca-* rows: CA-Stream (attention pooling in place of GAP). ca-gradcam/++/scorecam are those CAMs "
            "computed on the stream model at the same layer (ca-gradcam equals gradcam exactly while the "
            "stream's last projection is the identity, castream.train_last_projection: false), ca-attention "
            "its raw last-stage attention (class-agnostic); all are scored by the unchanged backbone. "
            "Agreement = share of images where the stream model's top-1 is the backbone's."
        )
    return notes


def protocol_notes(heads: Sequence[tuple[Path, Explainer, ExperimentConfig]]) -> list[str]:
    """The ROAD protocol every row is scored under (the first head's), and the heads whose configs name another."""
    scored = road_protocol_of(heads[0][2].evaluation)
    others = [
        f"{directory} ({protocol})"
        for directory, _, config in heads[1:]
        if (protocol := road_protocol_of(config.evaluation)) != scored
    ]
    notes = [f"ROAD protocol of every row: {scored}."]
    if others:
        notes.append(
            f"The heads' configs name different ROAD protocols: {', '.join(others)} differ from the first "
            f"head's, {heads[0][0]} ({scored}); every row here is scored under the first head's, so "
            "the rows are comparable but some heads' own protocols are not used (choose one with "
            "--imputer/--percentages)."
        )
    return notes


def write_outputs(
    rows: Sequence[Row],
    contributions: dict[str, list[LayerContribution]],
    notes: list[str],
    header: dict[str, Any],
    out: Path,
) -> list[Path]:
    """comparison.md, comparison.csv and comparison.json in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    markdown = [
        f"# Comparison: {header['backbone']}, {header['source']} ({header['images']} images)",
        "",
        markdown_table(rows),
        "",
        *[f"- {note}" for note in notes],
    ]
    for name, entries in contributions.items():
        markdown += ["", f"## Layer contributions of {name} (P-TAME Table 2)", "", contributions_table(entries)]
    paths = [out / "comparison.md", out / "comparison.csv", out / "comparison.json"]
    paths[0].write_text("\n".join(markdown) + "\n")
    keys = sorted({key for row in rows for key in row.metrics})
    with paths[1].open("w", newline="") as file:
        writer = csv.writer(file)
        fixed = ["resolution", "forward_passes", "auxiliary_passes", "seconds_per_image", "coverage", "agreement"]
        writer.writerow(["method", "kind", *keys, *fixed])
        for row in rows:
            writer.writerow(
                [
                    row.method,
                    row.kind,
                    *(row.metrics.get(k) for k in keys),
                    *("" if getattr(row, k) is None else getattr(row, k) for k in fixed),
                ]
            )
    paths[2].write_text(
        json.dumps(
            header
            | {
                "conventions": notes,
                "rows": [asdict(row) for row in rows],
                "contributions": {name: [asdict(c) for c in entries] for name, entries in contributions.items()},
            },
            indent=2,
        )
    )
    return paths


def write_figure(
    evalset: EvalSet,
    classifier: Classifier,
    maps: dict[str, torch.Tensor],
    rows: Sequence[Row],
    methods: Sequence[Method],
    path: Path,
) -> Path:
    """The first images in rows, one column per method; heads' cells of untrained classes say so."""
    shown = slice(0, min(FIGURE_IMAGES, len(evalset)))
    targets = evalset.targets[shown].cpu()
    titles = [f"{classifier.category(int(t))} ({float(p):.2f})" for t, p in zip(targets, evalset.probabilities[shown])]
    notes = {
        method.name: [
            "" if trained else "untrained class"
            for trained in ClassCoverage.of(method.explainer.head, method.config.evaluation.min_class_count)
            .covered(targets)
            .tolist()
        ]
        for method in methods
        if method.explainer is not None and method.config is not None
    }
    return method_grid(
        evalset.first_images(FIGURE_IMAGES), {row.method: maps[row.method][shown] for row in rows}, titles, path, notes
    )


FIGURE_IMAGES = 4


# (header, key, digits); a None value prints as "n/a"
COLUMNS = [
    ("AD@100 ↓", "ad_100", 2),
    ("IC@100 ↑", "ic_100", 1),
    ("AD@50 ↓", "ad_50", 2),
    ("IC@50 ↑", "ic_50", 1),
    ("AD@15 ↓", "ad_15", 2),
    ("IC@15 ↑", "ic_15", 1),
    ("MoRF ↓", "road_morf_auc", 3),
    ("LeRF ↑", "road_lerf_auc", 3),
    ("AG ↑", "ag", 2),
    ("Ins ↑", "insertion_auc", 3),
    ("Del ↓", "deletion_auc", 3),
    ("R", "resolution", 0),
    ("fwd passes", "forward_passes", 0),
    ("s / image", "seconds_per_image", 3),
    ("coverage", "coverage", 2),
    ("agreement", "agreement", 3),
]
