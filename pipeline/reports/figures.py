"""A trained head's figures on a split: the explanation grid of its first images and the ROAD curve."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.evaluation.scoring import EvalSet, Evaluation
from pipeline.reports.plots import explanation_grid, road_curve
from pipeline.training.head_training import TrainedHead

GRID_IMAGES = 8


def grid_and_curve(
    evalset: EvalSet, maps: torch.Tensor, evaluation: Evaluation, trained: TrainedHead, directory: Path, title: str
) -> list[Path]:
    """Explanation grid of the first validation images and the ROAD curve, as PNGs."""
    classifier = trained.explainer.classifier
    count = min(GRID_IMAGES, len(evalset))
    titles = [
        f"{classifier.category(int(t))} ({float(p):.2f})"
        for t, p in zip(evalset.targets[:count], evalset.probabilities[:count])
    ]
    grid = explanation_grid(evalset.first_images(count), maps[:count].cpu(), titles, directory / "explanations.png")
    road = evaluation.road
    curve = road_curve(
        road.percentages,
        road.morf,
        road.lerf,
        road.morf_auc,
        road.lerf_auc,
        directory / "road_curve.png",
        title=f"{title}\n{road.protocol}",
    )
    return [grid, curve]
