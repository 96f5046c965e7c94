"""Faithfulness scores of maps on a classified split: ROAD (both orders) and AD/IC of a head's maps or of trivial
reference maps, computed once per split and reused (`EvalSet`)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from pipeline.config import EvalConfig, ExperimentConfig
from pipeline.data.sources import build_splits, plain_images
from pipeline.errors import UserError
from pipeline.metrics.adic import AdIcResult, ad_ic
from pipeline.metrics.road import RoadResult, road
from pipeline.models.classifiers import Classifier
from pipeline.models.coverage import ClassCoverage
from pipeline.models.explainer import Explainer
from pipeline.progress import Progress

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


def load_eval_set(classifier: Classifier, config: ExperimentConfig, split: str | None,
                  images: Sequence[str] | None = None, limit: int | None = None) -> EvalSet:
    """The config's ``split`` ("val" or "test"), or the image files and folders ``images``, classified once; only
    the first ``limit`` images when given."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: give a positive number of images")
    size = classifier.preprocessing.input_size
    if images:
        dataset = plain_images(images, size)
    else:
        splits = build_splits(config.data, size)
        dataset = splits.val if split == "val" else splits.test
    return prepare_eval_set(classifier, dataset, config.evaluation.batch_size, limit)
