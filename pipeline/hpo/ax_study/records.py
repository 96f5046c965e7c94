"""A trial as the rest of the pipeline sees it, and the Pareto order of trials (no Ax here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.hpo.ax_study.trial_state import TrialState


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the rest of the pipeline sees it. ``checkpoints``: its scores during training by percentage of
    the training done."""

    index: int
    status: TrialState
    parameters: dict[str, Any]
    metrics: dict[str, float]
    reason: str | None
    generator: str
    checkpoints: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def lambda3(self) -> float | None:
        """``1 − λ1 − λ2`` (the loss's third weight) when the trial searched λ1 and λ2."""
        if "lambda1" in self.parameters and "lambda2" in self.parameters:
            return 1.0 - self.parameters["lambda1"] - self.parameters["lambda2"]
        return None


def pareto_front(records: Sequence[TrialRecord], signs: Mapping[str, float]) -> list[TrialRecord]:
    """Completed trials that no other completed trial dominates, on observed (not predicted) values.

    ``signs`` maps each objective to +1 (maximise) or −1 (minimise).
    """
    scored = [
        (record, [signs[name] * record.metrics[name] for name in signs])
        for record in records
        if record.status is TrialState.COMPLETED and all(name in record.metrics for name in signs)
    ]
    return [record for record, score in scored if not any(dominates(other, score) for _, other in scored)]


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is at least as good as ``b`` everywhere and better somewhere (values signed so that larger is better)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def trade_off(record: TrialRecord, signs: Mapping[str, float]) -> float:
    """The sum of direction-signed objectives, e.g. ``LeRF − MoRF``: larger is better."""
    return sum(sign * record.metrics[name] for name, sign in signs.items())
