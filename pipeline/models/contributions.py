"""Per-layer contributions of a trained head (P-TAME Table 2), beside each layer's share of the channels.

The softmax over a class row's near-uniform fusion weights is almost uniform, so a layer's contribution
mostly follows its channel count; the channel share is the baseline it must be read against. The paper
averages over all classes; ``contribution_trained`` averages over the classes the head was trained on
(an untrained class's row is its random initialisation).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.models.coverage import ClassCoverage
from pipeline.models.explainer import Explainer


@dataclass
class LayerContribution:
    layer: str
    channels: int
    channel_share: float
    contribution: float  # mean over all classes (the paper's number)
    contribution_trained: float | None  # mean over trained classes; None when no class is trained


def layer_contributions(explainer: Explainer, min_count: int) -> list[LayerContribution]:
    """One entry per auxiliary layer, in the head's branch order."""
    head = explainer.head
    trained = ClassCoverage.of(head, min_count).trained.nonzero().flatten()
    overall = head.contributions().tolist()
    on_trained = head.contributions(trained.to(head.fuse.weight.device)).tolist() if trained.numel() else None
    return [
        LayerContribution(layer, channels, share, overall[i], on_trained[i] if on_trained else None)
        for i, (layer, channels, share) in enumerate(
            zip(explainer.auxiliary.layers, head.channels, head.channel_shares().tolist())
        )
    ]


def contribution_metrics(contributions: list[LayerContribution]) -> dict[str, float]:
    """Flat MLflow metric names: contribution.<layer>, contribution_trained.<layer>, channel_share.<layer>."""
    metrics = {}
    for entry in contributions:
        metrics[f"contribution.{entry.layer}"] = entry.contribution
        metrics[f"channel_share.{entry.layer}"] = entry.channel_share
        if entry.contribution_trained is not None:
            metrics[f"contribution_trained.{entry.layer}"] = entry.contribution_trained
    return metrics
