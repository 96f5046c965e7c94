"""Trained heads against baselines on the same metrics and images: ``python -m pipeline.compare``.

    python -m pipeline.compare --head DIR [--head DIR2 ...] (--split val|test | --images PATH...)
        [--methods gradcam,gradcam++,scorecam,ablationcam,rise,random,center] [--limit N] [--out DIR]
        [--target-layer NAME] [--rise-masks N] [--tracking-uri URI] [--search NAME]
        [--imputer noisy_linear|telea] [--percentages P...]

One row per head and per method: AD/IC at 100/50/15 % kept, ROAD MoRF/LeRF AUC, AG, Insertion and Deletion
AUC, the map resolution R, forward passes per explanation (counted with hooks), seconds per image and, for
heads, the coverage (share of images whose explained class the head was trained on). Every row is scored by
the same functions, on the same images, for the same classes (the backbone's clean predictions), and ROAD under
one protocol: the first head's ``evaluation`` config, or ``--imputer``/``--percentages``; the output says which,
and says so when the heads' configs name different protocols.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from mlflow.exceptions import MlflowException
from torch import nn

from pipeline import cli
from pipeline.baselines.cam import CAM_METHODS, CamMethod
from pipeline.baselines.rise import RiseSettings, rise_saliency
from pipeline.config import ExperimentConfig
from pipeline.errors import UserError
from pipeline.evaluate import (EvalSet, add_road_arguments, add_source_arguments, evaluate_maps, head_maps,
                               load_eval_set, reference_maps, road_overrides)
from pipeline.metrics.road import road_protocol_of
from pipeline.metrics.faithfulness import ROWS_PER_STEP, faithfulness
from pipeline.models.classifiers import Classifier
from pipeline.models.contributions import LayerContribution, layer_contributions
from pipeline.models.coverage import ClassCoverage
from pipeline.models.explainer import Explainer
from pipeline.plots import method_grid
from pipeline.search import STATE, SearchState
from pipeline.tracking import RunLog, Tracker, check_tracking_server
from pipeline.train import add_device_argument, load_explainer

METHODS = (*CAM_METHODS, "rise", "random", "center")
Kind = Literal["head", "baseline", "reference"]
FIGURE_IMAGES = 4
SEARCHES = Path("runs/search")
# (header, key, digits); a None value prints as "n/a"
COLUMNS = [("AD@100 ↓", "ad_100", 2), ("IC@100 ↑", "ic_100", 1), ("AD@50 ↓", "ad_50", 2), ("IC@50 ↑", "ic_50", 1),
           ("AD@15 ↓", "ad_15", 2), ("IC@15 ↑", "ic_15", 1), ("MoRF ↓", "road_morf_auc", 3),
           ("LeRF ↑", "road_lerf_auc", 3), ("AG ↑", "ag", 2), ("Ins ↑", "insertion_auc", 3),
           ("Del ↓", "deletion_auc", 3), ("R", "resolution", 0), ("fwd passes", "forward_passes", 0),
           ("s / image", "seconds_per_image", 3), ("coverage", "coverage", 2)]


@dataclass
class Method:
    """One row's way to make maps for an eval set, and the networks whose forward passes it pays for."""

    name: str
    kind: Kind
    resolution: int
    make_maps: Callable[[EvalSet], torch.Tensor]
    backbone: nn.Module | None  # counted as forward passes per explanation
    auxiliary: nn.Module | None = None  # heads: the auxiliary network's passes, counted separately
    explainer: Explainer | None = None
    config: ExperimentConfig | None = None
    target_layer: str | None = None  # CAMs: the backbone module they read


class ForwardCounter:
    """Counts the images that go through a module's forward (a forward hook); a context manager."""

    def __init__(self, module: nn.Module | None):
        self.images = 0
        self._handle = module.register_forward_hook(self._count) if module is not None else None

    def _count(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        self.images += inputs[0].shape[0]

    def __enter__(self) -> "ForwardCounter":
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
        methods.append(Method(f"{kind} ({name})", "head", head_resolution(explainer),
                              lambda evalset, e=explainer, c=config: head_maps(e, evalset, c.evaluation.batch_size),
                              explainer.classifier, explainer.auxiliary, explainer, config))
    return methods


def baseline_methods(names: Sequence[str], classifier: Classifier, target_layer: str | None, batch_size: int,
                     rise: RiseSettings) -> list[Method]:
    """The requested baselines; CAM target layers are resolved (and checked) here, before any work."""
    methods = []
    for name in names:
        if name in CAM_METHODS:
            cam = CamMethod(name, classifier, target_layer, batch_size)
            methods.append(Method(name, "baseline", cam.resolution,
                                  lambda evalset, cam=cam: cam(evalset.images, evalset.targets), classifier,
                                  target_layer=cam.layer_name))
        elif name == "rise":
            methods.append(Method(name, "baseline", rise.cells ** 2,
                                  lambda evalset: rise_saliency(classifier, evalset.images, evalset.targets, rise),
                                  classifier))
        else:
            methods.append(Method(name, "reference", classifier.preprocessing.input_size ** 2,
                                  lambda evalset, kind=name: reference_maps(kind, len(evalset),
                                                                            tuple(evalset.images.shape[-2:])),
                                  None))
    return methods


def run_method(method: Method, classifier: Classifier, evalset: EvalSet, settings: ExperimentConfig
               ) -> tuple[Row, torch.Tensor]:
    """Make the maps (timed, forward passes counted), then score them like every other row."""
    count = len(evalset)
    with ForwardCounter(method.backbone) as backbone, ForwardCounter(method.auxiliary) as auxiliary:
        started = time.perf_counter()
        maps = method.make_maps(evalset)
        if maps.is_cuda:  # the head's maps come without a host sync: wait for the queued kernels
            torch.cuda.synchronize(maps.device)
        seconds = time.perf_counter() - started
    started = time.perf_counter()
    evaluation = evaluate_maps(classifier, evalset, maps, settings.evaluation)
    measures = faithfulness(classifier, evalset.images, maps, evalset.targets, evalset.probabilities,
                            batch_size=settings.evaluation.batch_size)
    scoring = time.perf_counter() - started
    coverage = None
    if method.explainer is not None:
        coverage = ClassCoverage.of(method.explainer.head, method.config.evaluation.min_class_count
                                    ).fraction(evalset.targets)
    row = Row(method.name, method.kind, evaluation.metrics() | measures.metrics(), method.resolution,
              backbone.images / count, auxiliary.images / count if method.auxiliary is not None else None,
              seconds / count, coverage,
              {"road": asdict(evaluation.road), "adic": asdict(evaluation.adic),
               "insertion": asdict(measures.insertion), "deletion": asdict(measures.deletion),
               "scoring_seconds": round(scoring, 3)})
    return row, maps.cpu()


def _cell(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if digits else f"{value:g}"


def _passes(row: Row) -> str:
    backbone = _cell(row.forward_passes, 0)
    return backbone if row.auxiliary_passes is None else f"{backbone} + {_cell(row.auxiliary_passes, 0)} aux"


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| method | " + " | ".join(header for header, _, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for row in rows:
        cells = [_passes(row) if key == "forward_passes" else _cell(row.value(key), digits)
                 for _, key, digits in COLUMNS]
        lines.append(f"| {row.method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def contributions_table(contributions: Sequence[LayerContribution]) -> str:
    lines = ["| layer | channels | channel share | contribution (all classes) | contribution (trained classes) |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {c.layer} | {c.channels} | {c.channel_share:.2%} | {c.contribution:.2%} | "
              f"{'n/a' if c.contribution_trained is None else f'{c.contribution_trained:.2%}'} |"
              for c in contributions]
    return "\n".join(lines)


def conventions(evalset: EvalSet, rise: RiseSettings, layers: dict[str, str]) -> list[str]:
    width = evalset.images.shape[-1]
    cam_layers = ", ".join(f"{name}: {layer}" for name, layer in layers.items()) or "none"
    return [
        "Scores are softmax probabilities (ROAD: accuracy) of the class the backbone predicts on the clean image; "
        "every map masks pixel space (removed pixels go black; ROAD imputes them).",
        "AD/IC/AG in %, ROAD/Insertion/Deletion as AUC. Insertion starts from the image blurred (Gaussian 11, "
        f"sigma 5), Deletion replaces pixels by black; {ROWS_PER_STEP * width} px per step.",
        f"R = map cells before upsampling. Forward passes are counted per explanation. CAM target layers: "
        f"{cam_layers}; RISE: N = {rise.masks}, s = {rise.cells}, p1 = {rise.keep}, seed {rise.seed}.",
        "Coverage = share of images whose explained class the head was trained on (maps of untrained classes are "
        "the head's random initial rows); n/a for baselines, which explain any class.",
    ]


def protocol_notes(heads: Sequence[tuple[Path, Explainer, ExperimentConfig]]) -> list[str]:
    """The ROAD protocol every row is scored under (the first head's), and the heads whose configs name another."""
    scored = road_protocol_of(heads[0][2].evaluation)
    others = [f"{directory} ({protocol})" for directory, _, config in heads[1:]
              if (protocol := road_protocol_of(config.evaluation)) != scored]
    notes = [f"ROAD protocol of every row: {scored}."]
    if others:
        notes.append(f"The heads' configs name different ROAD protocols: {', '.join(others)} differ from the first "
                     f"head's, {heads[0][0]} ({scored}); every row here is scored under the first head's, so "
                     "the rows are comparable but some heads' own protocols are not used (choose one with "
                     "--imputer/--percentages).")
    return notes


def write_outputs(rows: Sequence[Row], contributions: dict[str, list[LayerContribution]], notes: list[str],
                  header: dict[str, Any], out: Path) -> list[Path]:
    """comparison.md, comparison.csv and comparison.json in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    markdown = [f"# Comparison: {header['backbone']}, {header['source']} ({header['images']} images)", "",
                markdown_table(rows), "", *[f"- {note}" for note in notes]]
    for name, entries in contributions.items():
        markdown += ["", f"## Layer contributions of {name} (P-TAME Table 2)", "", contributions_table(entries)]
    paths = [out / "comparison.md", out / "comparison.csv", out / "comparison.json"]
    paths[0].write_text("\n".join(markdown) + "\n")
    keys = sorted({key for row in rows for key in row.metrics})
    with paths[1].open("w", newline="") as file:
        writer = csv.writer(file)
        fixed = ["resolution", "forward_passes", "auxiliary_passes", "seconds_per_image", "coverage"]
        writer.writerow(["method", "kind", *keys, *fixed])
        for row in rows:
            writer.writerow([row.method, row.kind, *(row.metrics.get(k) for k in keys),
                             *("" if getattr(row, k) is None else getattr(row, k) for k in fixed)])
    paths[2].write_text(json.dumps(header | {"conventions": notes, "rows": [asdict(row) for row in rows],
                                             "contributions": {name: [asdict(c) for c in entries]
                                                               for name, entries in contributions.items()}},
                                   indent=2))
    return paths


def write_figure(evalset: EvalSet, classifier: Classifier, maps: dict[str, torch.Tensor], rows: Sequence[Row],
                 methods: Sequence[Method], path: Path) -> Path:
    """The first images in rows, one column per method; heads' cells of untrained classes say so."""
    shown = slice(0, min(FIGURE_IMAGES, len(evalset)))
    targets = evalset.targets[shown].cpu()
    titles = [f"{classifier.category(int(t))} ({float(p):.2f})"
              for t, p in zip(targets, evalset.probabilities[shown])]
    notes = {method.name: ["" if trained else "untrained class" for trained in
                           ClassCoverage.of(method.explainer.head, method.config.evaluation.min_class_count
                                            ).covered(targets).tolist()]
             for method in methods if method.explainer is not None}
    return method_grid(evalset.images[shown].cpu(), {row.method: maps[row.method][shown] for row in rows},
                       titles, path, notes)


def parse_methods(text: str) -> list[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise UserError(f"unknown method {unknown[0]!r} in --methods; choose from {','.join(METHODS)}")
    return list(dict.fromkeys(names))


def load_heads(directories: Sequence[Path], device: str, overrides: Sequence[str] = ()
               ) -> list[tuple[Path, Explainer, ExperimentConfig]]:
    """Every head (``overrides`` as ``--set``), checked to explain the same backbone (same name and weights)."""
    if len(set(map(Path.resolve, directories))) < len(directories):
        raise UserError("the same --head folder is given twice; give each head once")
    heads = [(directory, *load_explainer(directory, device, overrides)) for directory in directories]
    first_dir, _, first = heads[0]
    for directory, _, config in heads[1:]:
        mine, theirs = (first.model.backbone, first.model.backbone_weights), (config.model.backbone,
                                                                              config.model.backbone_weights)
        if mine != theirs:
            raise UserError(f"the heads explain different backbones: {first_dir} explains {mine[0]} "
                            f"(weights {mine[1] or 'library'}), {directory} explains {theirs[0]} "
                            f"(weights {theirs[1] or 'library'}); compare heads of one backbone at a time")
    return heads


def search_parent_run(name: str) -> str:
    """The MLflow parent run of search ``name`` (a search folder, or a name under runs/search)."""
    for state in (Path(name) / STATE, SEARCHES / name / STATE):
        run_id = SearchState.load(state).values.get("parent_run_id") if state.is_file() else None
        if run_id:
            return run_id
    raise UserError(f"no search {name!r}: neither {Path(name) / STATE} nor {SEARCHES / name / STATE} names a parent "
                    "run; give --search the --name of a search run from this folder, or the search's folder")


def start_tracking(args: argparse.Namespace, params: dict[str, Any]) -> RunLog | None:
    """The comparison's MLflow run, started before the work so a bad --search or URI fails fast."""
    if not (args.tracking_uri or args.search):
        return None
    parent = search_parent_run(args.search) if args.search else None
    tracker = Tracker(args.tracking_uri)
    try:
        return tracker.start_run("comparison", params, {"role": "comparison"}, parent_run_id=parent)
    except MlflowException as error:
        raise UserError(f"cannot log to {tracker.tracking_uri}: {str(error).splitlines()[0]}; pass the "
                        "--tracking-uri the search used") from None


def metric_key(name: str) -> str:
    """An MLflow-safe metric prefix: "gradcam++" -> "gradcampp", "P-TAME (head)" -> "P-TAME_head"."""
    return re.sub(r"[^A-Za-z0-9_.\-/]+", "_", name.replace("+", "p")).strip("_")


def log_comparison(run: RunLog, rows: Sequence[Row], contributions: dict[str, list[LayerContribution]],
                   files: Sequence[Path]) -> None:
    metrics = {}
    for row in rows:
        values = row.metrics | {"resolution": row.resolution, "forward_passes": row.forward_passes,
                                "seconds_per_image": row.seconds_per_image}
        if row.coverage is not None:
            values["coverage"] = row.coverage
        metrics |= {f"{metric_key(row.method)}.{key}": value for key, value in values.items()}
    for name, entries in contributions.items():
        metrics |= {f"{metric_key(name)}.contribution.{c.layer}": c.contribution for c in entries}
    run.log_metrics(metrics)
    for path in files:
        run.log_artifact(path, "comparison")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--head", required=True, action="append", type=Path,
                        help="folder written by pipeline.train (repeatable; all must explain the same backbone)")
    add_source_arguments(parser)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {','.join(METHODS)}")
    parser.add_argument("--target-layer", help="module of the backbone the CAMs read (default: the backbone's preset)")
    parser.add_argument("--rise-masks", type=int, default=RiseSettings.masks, help="RISE's N (default 8000)")
    parser.add_argument("--out", type=Path, default=Path("comparison"), help="output folder")
    parser.add_argument("--tracking-uri", help="log the comparison to MLflow here")
    parser.add_argument("--search", help="nest the MLflow run under this search's parent run (runs/search/NAME)")
    add_road_arguments(parser)
    add_device_argument(parser)
    args = parser.parse_args(argv)
    args.methods = parse_methods(args.methods)
    if args.rise_masks < 1:
        parser.error(f"--rise-masks {args.rise_masks}: give a positive number of masks")
    if args.tracking_uri or args.search:
        check_tracking_server(args.tracking_uri)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    heads = load_heads(args.head, args.device, road_overrides(args))
    _, first, config = heads[0]
    road_notes = protocol_notes(heads)
    print("\n".join(road_notes), flush=True)
    classifier = first.classifier
    rise = RiseSettings(masks=args.rise_masks, batch_size=config.evaluation.batch_size)
    methods = head_methods(heads) + baseline_methods(args.methods, classifier, args.target_layer,
                                                     config.evaluation.batch_size, rise)
    evalset = load_eval_set(classifier, config, args)
    layers = {m.name: m.target_layer for m in methods if m.target_layer is not None}
    header = {"backbone": config.model.backbone, "source": args.split or "images", "images": len(evalset),
              "heads": [str(directory) for directory, _, _ in heads], "methods": args.methods,
              "target_layers": layers, "rise": asdict(rise), "road_protocol": road_protocol_of(config.evaluation)}
    run = start_tracking(args, header)
    with run if run is not None else contextlib.nullcontext():  # a failure marks the MLflow run FAILED
        rows, maps = [], {}
        started = time.perf_counter()
        for method in methods:
            row, maps[method.name] = run_method(method, classifier, evalset, config)
            rows.append(row)
            print(f"{method.name}: {row.seconds_per_image:.3f} s and {_passes(row)} forward passes per map, "
                  f"scored in {row.details['scoring_seconds']:.1f} s", flush=True)
        contributions = {m.name: layer_contributions(m.explainer, m.config.evaluation.min_class_count)
                         for m in methods if m.explainer is not None}
        notes = conventions(evalset, rise, layers) + road_notes
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
