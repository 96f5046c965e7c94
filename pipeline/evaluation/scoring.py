"""Faithfulness scores of maps on a classified split: ROAD (both orders) and AD/IC of a head's maps or of trivial
reference maps. Blockwise evaluation: the split is read onto the device block by block and its maps are made block
by block, so memory does not grow with the split; its clean predictions are computed once and reused (`EvalSet`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Literal

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from pipeline.config import EvalConfig, ExperimentConfig
from pipeline.data.sources import build_splits, dataset_size, plain_images
from pipeline.errors import UserError
from pipeline.metrics.adic import DEFAULT_KEEP, AdIcResult, adic_probabilities, adic_result
from pipeline.metrics.road import RoadProtocol, RoadResult, images_per_chunk, road_correct, road_result
from pipeline.models.classifiers import Classifier, in_parts
from pipeline.models.coverage import ClassCoverage
from pipeline.models.explainer import Explainer
from pipeline.progress import Progress

MapKind = Literal["head", "random", "center"]
SHOWN_MAPS = 8  # maps of a split's first images kept for figures


@dataclass
class SplitBlock:
    """A block of a split: its images on the device, their place in the split and their clean predictions."""

    first: int  # index of the first image in the split
    images: torch.Tensor  # [B, 3, H, W] pixel space, on the classifier's device
    targets: torch.Tensor  # [B] the classifier's prediction on the clean image, on the device

    def __len__(self) -> int:
        return self.targets.numel()


def image_batches(
    dataset: Dataset, size: int, device: torch.device, num_workers: int = 0
) -> Iterator[tuple[int, torch.Tensor]]:
    """(index of the first image, images on ``device``) for ``dataset`` in order, ``size`` images at a time."""
    loader = DataLoader(dataset, batch_size=size, num_workers=num_workers, pin_memory=device.type == "cuda")
    first = 0
    for images, _ in loader:
        yield first, images.to(device, non_blocking=True)
        first += images.shape[0]


@dataclass
class EvalSet:
    """A split classified once: the clean predictions are kept on the CPU, the images are read again, block by
    block, whenever the split is scored."""

    dataset: Dataset
    targets: torch.Tensor  # [N] the classifier's prediction on the clean image
    probabilities: torch.Tensor  # [N] softmax probability of that prediction
    size: tuple[int, int]  # (H, W) of the images
    device: torch.device
    num_workers: int = 0

    def __len__(self) -> int:
        return self.targets.numel()

    def blocks(self, size: int) -> Iterator[SplitBlock]:
        """The split in order, ``size`` images at a time, on the device."""
        for first, images in image_batches(self.dataset, size, self.device, self.num_workers):
            yield SplitBlock(first, images, self.targets[first : first + images.shape[0]].to(self.device))

    def first_images(self, count: int) -> torch.Tensor:
        """The first ``count`` images, on the CPU (for figures)."""
        return torch.stack([self.dataset[index][0] for index in range(min(count, len(self)))])


@torch.no_grad()
def prepare_eval_set(
    classifier: Classifier, dataset: Dataset, batch_size: int = 32, limit: int | None = None, num_workers: int = 0
) -> EvalSet:
    """Classify a split once, reading it in batches (``num_workers`` loader processes)."""
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, dataset_size(dataset))))
    device = classifier.mean.device
    targets, probabilities, size = [], [], (0, 0)
    for _, images in image_batches(dataset, batch_size, device, num_workers):
        best = in_parts(classifier, images).softmax(1).max(1)
        targets.append(best.indices.cpu())
        probabilities.append(best.values.cpu())
        size = (images.shape[-2], images.shape[-1])
    if not targets:
        raise ValueError("the evaluation split is empty")
    return EvalSet(dataset, torch.cat(targets), torch.cat(probabilities), size, device, num_workers)


MapMaker = Callable[[SplitBlock], torch.Tensor]  # maps [B, H, W] in [0, 1] of a block's images for its targets


class PerImage:
    """Per-image results of a split (image on the last axis), written block by block into tensors allocated once,
    at the first block, for the whole split. Small per-block parts kept in a list would stay on the heap between
    each block's large temporaries and fragment it: peak memory then grew with the split (see README)."""

    def __init__(self, count: int):
        self.count = count
        self.columns: dict[str, torch.Tensor] = {}

    def put(self, first: int, parts: dict[str, torch.Tensor]) -> None:
        """Write each part [..., B] (on the CPU) at images ``first`` to ``first + B``."""
        for name, part in parts.items():
            if name not in self.columns:
                self.columns[name] = part.new_empty(*part.shape[:-1], self.count)
            self.columns[name][..., first : first + part.shape[-1]] = part

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.columns[name]


def reference_maps(
    kind: MapKind, count: int, size: tuple[int, int], seed: int = 0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Trivial maps of ``count`` images: uniform noise per pixel (drawn with ``generator``, else a new one seeded
    with ``seed``), or a centred Gaussian blob."""
    if kind == "random":
        return torch.rand(count, *size, generator=generator or torch.Generator().manual_seed(seed))
    rows = torch.linspace(-1, 1, size[0]).view(-1, 1)
    cols = torch.linspace(-1, 1, size[1]).view(1, -1)
    return torch.exp(-(rows**2 + cols**2) / 0.5).expand(count, *size).clone()


def reference_maker(kind: MapKind, seed: int = 0) -> MapMaker:
    """``reference_maps`` of each block; the random maps' generator is seeded again at the split's first image and
    carried across blocks, so a split scored blockwise draws what the whole split drawn at once draws."""
    generator = torch.Generator()

    def make(block: SplitBlock) -> torch.Tensor:
        if block.first == 0:
            generator.manual_seed(seed)
        return reference_maps(kind, len(block), (block.images.shape[-2], block.images.shape[-1]), seed, generator)

    return make


def head_maps(explainer: Explainer, batch_size: int = 32, predict: bool = False) -> MapMaker:
    """The head's min-max maps for each image's predicted class, at image resolution, ``batch_size`` at a time; with
    ``predict`` each image also goes through the classifier, as explaining an image of unknown class does (what the
    comparison's cost columns count), else the block's known predictions are used."""
    explain = (lambda images, classes: explainer.explain(images, classes).saliency) if predict else explainer.saliency

    @torch.no_grad()
    def make(block: SplitBlock) -> torch.Tensor:
        return torch.cat(
            [
                explain(images, classes)
                for images, classes in zip(block.images.split(batch_size), block.targets.split(batch_size))
            ]
        )

    return make


def block_size(batch_size: int, device: torch.device) -> int:
    """Images per block of a blockwise evaluation: whole ROAD chunks and whole batches, so every score is the one the
    whole split in memory would get (the imputer solves a chunk's images together, to a tolerance)."""
    return math.lcm(batch_size, images_per_chunk(device))


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
        report = {
            "metrics": self.metrics(),
            "road": asdict(self.road),
            "adic": asdict(self.adic),
            "images": self.images,
            "seconds": round(self.seconds, 3),
        }
        if self.trained is not None:
            assert self.classes is not None  # evaluate_head sets both
            report |= {
                "class_coverage": self.class_coverage,
                "per_image": [{"class": c, "trained": t} for c, t in zip(self.classes, self.trained)],
            }
        return report


def evaluate_maps(
    classifier: Classifier,
    evalset: EvalSet,
    maps: MapMaker,
    eval_config: EvalConfig,
    progress: bool = False,
    also: Callable[[SplitBlock, torch.Tensor], None] | None = None,
) -> tuple[Evaluation, torch.Tensor]:
    """ROAD (both orders, every percentage) and AD/IC of the maps ``maps`` makes for each block of ``evalset``;
    ``also``, if given, gets every block with its maps. Returns the evaluation and the first SHOWN_MAPS maps."""
    started = time.perf_counter()
    classify = partial(in_parts, classifier)
    results, shown = PerImage(len(evalset)), []
    protocol = RoadProtocol.of(eval_config)
    generator = torch.Generator(device=evalset.device).manual_seed(eval_config.seed)  # carried across the blocks
    with Progress(len(evalset), "ROAD", "images", enabled=progress) as bar:
        for block in evalset.blocks(block_size(eval_config.batch_size, evalset.device)):
            saliency = maps(block).to(block.images.device)

            def finished(done: int, first: int = block.first) -> None:
                bar.update(first + done - bar.done)

            results.put(
                block.first,
                {
                    "correct": road_correct(
                        classify,
                        block.images,
                        saliency,
                        block.targets,
                        protocol,
                        eval_config.batch_size,
                        generator,
                        finished,
                    ),
                    "masked": adic_probabilities(
                        classify, block.images, saliency, block.targets, DEFAULT_KEEP, eval_config.batch_size
                    ),
                },
            )
            if also is not None:
                also(block, saliency)
            if block.first < SHOWN_MAPS:  # a copy: a view would keep the whole block's maps alive
                shown.append(saliency[: SHOWN_MAPS - block.first].to("cpu", copy=True))
    evaluation = Evaluation(
        road_result(protocol, results["correct"]),
        adic_result(DEFAULT_KEEP, evalset.probabilities, results["masked"]),
        len(evalset),
        time.perf_counter() - started,
    )
    return evaluation, torch.cat(shown)


def evaluate_head(
    explainer: Explainer, evalset: EvalSet, eval_config: EvalConfig, maps: MapKind = "head", progress: bool = False
) -> tuple[Evaluation, torch.Tensor]:
    """Evaluate the head's maps (or reference maps); returns the evaluation and the first SHOWN_MAPS maps.

    For the head's maps the evaluation also records which images' classes the head was trained on."""
    if maps != "head":
        return evaluate_maps(
            explainer.classifier, evalset, reference_maker(maps, eval_config.seed), eval_config, progress
        )
    evaluation, shown = evaluate_maps(
        explainer.classifier, evalset, head_maps(explainer, eval_config.batch_size), eval_config, progress
    )
    evaluation.classes = evalset.targets.tolist()
    evaluation.trained = ClassCoverage.of(explainer.head, eval_config.min_class_count).covered(evalset.targets).tolist()
    return evaluation, shown


def summary_line(evaluation: Evaluation) -> str:
    metrics = evaluation.metrics()
    line = (
        f"ROAD ({evaluation.road.protocol}): MoRF AUC {metrics['road_morf_auc']:.4f} (lower is better), "
        f"LeRF AUC {metrics['road_lerf_auc']:.4f} "
        f"(higher is better), AD@100 {metrics['ad_100']:.1f}, IC@100 {metrics['ic_100']:.1f} "
        f"on {evaluation.images} images in {evaluation.seconds:.1f} s"
    )
    if evaluation.trained is not None:
        untrained = evaluation.trained.count(False)
        line += f"; class coverage {evaluation.class_coverage:.2f}"
        if untrained:
            line += (
                f" ({untrained} image(s) explained by a class the head was not trained on: "
                "their maps are untrained, see per_image in the JSON)"
            )
    return line


def load_eval_set(
    classifier: Classifier,
    config: ExperimentConfig,
    split: str | None,
    images: Sequence[str] | None = None,
    limit: int | None = None,
) -> EvalSet:
    """The config's ``split`` ("val" or "test"), or the image files and folders ``images``, classified once; only
    the first ``limit`` images when given."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: give a positive number of images")
    size = classifier.preprocessing.input_size
    dataset: Dataset
    if images:
        dataset = plain_images(images, size)
    else:
        splits = build_splits(config.data, size)
        dataset = splits.val if split == "val" else splits.test
    return prepare_eval_set(classifier, dataset, config.evaluation.batch_size, limit, config.data.num_workers)
