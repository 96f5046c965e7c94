"""Faithfulness of a trained head: ROAD MoRF/LeRF and AD/IC on a split or on your own images.

    python -m pipeline.evaluate --head DIR (--split val|test | --images PATH...) [--limit N]
                                [--maps head|random|center] [--imputer noisy_linear|telea]
                                [--percentages P...] [--out FILE.json]

``--maps random|center`` scores trivial reference maps instead of the head, so a score has a yardstick.
ROAD follows the head's ``evaluation`` config (imputer, percentages) unless ``--imputer``/``--percentages``
override it; the summary line and the JSON name the protocol used.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from pipeline import cli
from pipeline.config import EvalConfig, ExperimentConfig
from pipeline.data import build_splits, plain_images
from pipeline.errors import UserError
from pipeline.metrics.adic import AdIcResult, ad_ic
from pipeline.metrics.road import IMPUTERS, RoadResult, road, road_protocol
from pipeline.models.classifiers import Classifier
from pipeline.models.coverage import ClassCoverage
from pipeline.models.explainer import Explainer
from pipeline.plots import road_curve
from pipeline.train import add_device_argument, load_explainer
from pipeline.training.progress import Progress

MapKind = Literal["head", "random", "center"]


@dataclass
class EvalSet:
    """A split's clean images with the classifier's own predictions: computed once, reused by every trial."""

    images: torch.Tensor  # [N, 3, H, W] pixel space, on the classifier's device
    targets: torch.Tensor  # [N] the classifier's prediction on the clean image
    probabilities: torch.Tensor  # [N] softmax probability of that prediction

    def __len__(self) -> int:
        return self.targets.numel()


@torch.no_grad()
def prepare_eval_set(classifier: Classifier, dataset: Dataset, batch_size: int = 32,
                     limit: int | None = None) -> EvalSet:
    """Load a split into memory and classify it once."""
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    device = classifier.mean.device
    images, targets, probabilities = [], [], []
    for batch, _ in DataLoader(dataset, batch_size=batch_size):
        batch = batch.to(device)
        probs = classifier(batch).softmax(1)
        best = probs.max(1)
        images.append(batch)
        targets.append(best.indices)
        probabilities.append(best.values)
    if not images:
        raise ValueError("the evaluation split is empty")
    return EvalSet(torch.cat(images), torch.cat(targets), torch.cat(probabilities))


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """``--split val|test`` or ``--images PATH...``, and ``--limit N``: the images a command scores."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--split", choices=["val", "test"], help="the config's validation or test split")
    source.add_argument("--images", nargs="+", help="image files or folders of images")
    parser.add_argument("--limit", type=int, help="use only the first N images")


def load_eval_set(classifier: Classifier, config: ExperimentConfig, args: argparse.Namespace) -> EvalSet:
    """The images chosen with ``add_source_arguments``, classified once."""
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: give a positive number of images")
    size = classifier.preprocessing.input_size
    if args.images:
        dataset = plain_images(args.images, size)
    else:
        splits = build_splits(config.data, size)
        dataset = splits.val if args.split == "val" else splits.test
    return prepare_eval_set(classifier, dataset, config.evaluation.batch_size, args.limit)


def add_road_arguments(parser: argparse.ArgumentParser) -> None:
    """``--imputer`` and ``--percentages``: the ROAD protocol, overriding the head's ``evaluation`` config."""
    parser.add_argument("--imputer", choices=IMPUTERS,
                        help="ROAD imputer: noisy_linear (ROAD paper) or telea (OpenCV inpainting, P-TAME paper's "
                             "Table 1); default: the head's evaluation.imputer")
    parser.add_argument("--percentages", type=int, nargs="+", metavar="P",
                        help="ROAD removal percentages, e.g. 10 30 50 70 (P-TAME paper); "
                             "default: the head's evaluation.percentages")


def road_overrides(args: argparse.Namespace) -> list[str]:
    """``--set``-style overrides for the ROAD arguments that were given."""
    overrides = [] if args.imputer is None else [f"evaluation.imputer={args.imputer}"]
    if args.percentages is not None:
        overrides.append(f"evaluation.percentages=[{', '.join(map(str, args.percentages))}]")
    return overrides


def reference_maps(kind: MapKind, count: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Trivial maps: independent uniform noise per pixel, or a centred Gaussian blob."""
    if kind == "random":
        return torch.rand(count, *size, generator=torch.Generator().manual_seed(seed))
    rows = torch.linspace(-1, 1, size[0]).view(-1, 1)
    cols = torch.linspace(-1, 1, size[1]).view(1, -1)
    return torch.exp(-(rows ** 2 + cols ** 2) / 0.5).expand(count, *size).clone()


@torch.no_grad()
def head_maps(explainer: Explainer, evalset: EvalSet, batch_size: int = 32) -> torch.Tensor:
    """The head's min-max maps for each image's predicted class, at image resolution."""
    parts = [explainer.explain(images, classes).saliency
             for images, classes in zip(evalset.images.split(batch_size), evalset.targets.split(batch_size))]
    return torch.cat(parts)


@dataclass
class Evaluation:
    """ROAD and AD/IC of one set of maps; for a head's maps also whether each image's class was trained."""

    road: RoadResult
    adic: AdIcResult
    images: int
    seconds: float
    classes: list[int] | None = None
    trained: list[bool] | None = None

    @property
    def class_coverage(self) -> float | None:
        """The fraction of evaluated images whose explained class the head was trained on."""
        return None if self.trained is None else sum(self.trained) / max(len(self.trained), 1)

    def metrics(self) -> dict[str, float]:
        coverage = {} if self.class_coverage is None else {"class_coverage": self.class_coverage}
        return self.road.metrics() | self.adic.metrics() | coverage

    def to_json(self) -> dict:
        report = {"metrics": self.metrics(), "road": asdict(self.road), "adic": asdict(self.adic),
                  "images": self.images, "seconds": round(self.seconds, 3)}
        if self.trained is not None:
            report |= {"class_coverage": self.class_coverage,
                       "per_image": [{"class": c, "trained": t} for c, t in zip(self.classes, self.trained)]}
        return report


def evaluate_maps(classifier: Classifier, evalset: EvalSet, maps: torch.Tensor, settings: EvalConfig,
                  progress: bool = False) -> Evaluation:
    """ROAD (both orders, every percentage) and AD/IC of ``maps`` [N, H, W] for ``classifier``."""
    started = time.perf_counter()
    maps = maps.to(evalset.images.device)
    generator = torch.Generator(device=evalset.images.device).manual_seed(settings.seed)
    with Progress(len(evalset), "ROAD", "images", enabled=progress) as bar:
        road_result = road(classifier, evalset.images, maps, evalset.targets, settings.percentages,
                           settings.imputer, settings.noise, settings.batch_size, generator,
                           progress=lambda done: bar.update(done - bar.done))
    adic_result = ad_ic(classifier, evalset.images, maps, evalset.targets, evalset.probabilities,
                        batch_size=settings.batch_size)
    return Evaluation(road_result, adic_result, len(evalset), time.perf_counter() - started)


def evaluate_head(explainer: Explainer, evalset: EvalSet, settings: EvalConfig, maps: MapKind = "head",
                  progress: bool = False) -> tuple[Evaluation, torch.Tensor]:
    """Evaluate the head's maps (or reference maps); returns the evaluation and the maps used.

    For the head's maps the evaluation also records which images' classes the head was trained on."""
    if maps != "head":
        saliency = reference_maps(maps, len(evalset), tuple(evalset.images.shape[-2:]), settings.seed)
        return evaluate_maps(explainer.classifier, evalset, saliency, settings, progress), saliency
    saliency = head_maps(explainer, evalset, settings.batch_size)
    evaluation = evaluate_maps(explainer.classifier, evalset, saliency, settings, progress)
    evaluation.classes = evalset.targets.tolist()
    evaluation.trained = ClassCoverage.of(explainer.head, settings.min_class_count).covered(evalset.targets).tolist()
    return evaluation, saliency


def summary_line(evaluation: Evaluation) -> str:
    metrics = evaluation.metrics()
    line = (f"ROAD ({evaluation.road.protocol}): MoRF AUC {metrics['road_morf_auc']:.4f} (lower is better), "
            f"LeRF AUC {metrics['road_lerf_auc']:.4f} "
            f"(higher is better), AD@100 {metrics['ad_100']:.1f}, IC@100 {metrics['ic_100']:.1f} "
            f"on {evaluation.images} images in {evaluation.seconds:.1f} s")
    if evaluation.trained is not None:
        untrained = evaluation.trained.count(False)
        line += f"; class coverage {evaluation.class_coverage:.2f}"
        if untrained:
            line += (f" ({untrained} image(s) explained by a class the head was not trained on: "
                     "their maps are untrained, see per_image in the JSON)")
    return line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--head", required=True, type=Path, help="folder written by pipeline.train")
    add_source_arguments(parser)
    parser.add_argument("--maps", choices=["head", "random", "center"], default="head")
    parser.add_argument("--out", type=Path, default=Path("evaluation.json"), help="metrics JSON (+ .png curve)")
    parser.add_argument("--min-count", type=int, help="training images a class needs to count as trained "
                                                       "(default: the head's evaluation.min_class_count)")
    add_road_arguments(parser)
    add_device_argument(parser)
    args = parser.parse_args(argv)
    overrides = road_overrides(args)
    if args.min_count is not None:
        overrides.append(f"evaluation.min_class_count={args.min_count}")
    explainer, config = load_explainer(args.head, args.device, overrides)
    evalset = load_eval_set(explainer.classifier, config, args)
    evaluation, _ = evaluate_head(explainer, evalset, config.evaluation, args.maps, progress=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = evaluation.to_json() | {"maps": args.maps, "head": str(args.head),
                                     "split": args.split or "images", "evaluation": asdict(config.evaluation)}
    args.out.write_text(json.dumps(report, indent=2))
    curve = road_curve(evaluation.road.percentages, evaluation.road.morf, evaluation.road.lerf,
                       evaluation.road.morf_auc, evaluation.road.lerf_auc, args.out.with_suffix(".png"),
                       title=f"ROAD, {args.maps} maps, {config.model.backbone}\n{evaluation.road.protocol}")
    print(summary_line(evaluation))
    print(f"wrote {args.out} and {curve}")
    return 0


if __name__ == "__main__":
    cli.run(main)
