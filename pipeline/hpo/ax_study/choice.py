"""The final choice of a search's trial: by the observed scores, by a model's predictions of them, or by
``--select`` (no Ax here: the predictions come in as numbers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UserError
from pipeline.hpo.ax_study.records import TrialRecord, dominates, pareto_front, trade_off
from pipeline.hpo.ax_study.trial_state import TrialState


@dataclass(frozen=True)
class Choice:
    """The final head's trial and why: the rule (``observed``, ``predicted`` or ``selected`` by ``--select``), and
    the trial's LeRF − MoRF as observed and as predicted (None without a model prediction; ``note`` says why)."""

    record: TrialRecord
    rule: str
    observed: float
    predicted: float | None
    note: str | None = None

    def describe(self) -> str:
        """One line, e.g. "the largest model-predicted LeRF − MoRF on the predicted Pareto front (trial 7): ..."."""
        words = {
            "observed": "the largest observed LeRF − MoRF on the observed Pareto set",
            "predicted": "the largest model-predicted LeRF − MoRF on the model-predicted Pareto front",
            "selected": "chosen with --select",
        }[self.rule]
        predicted = "n/a" if self.predicted is None else f"{self.predicted:.4f}"
        return (
            f"{words}: trial {self.record.index}, LeRF − MoRF observed {self.observed:.4f}, predicted {predicted}"
            + (f" ({self.note})" if self.note else "")
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "trial": self.record.index,
            "observed_trade_off": self.observed,
            "predicted_trade_off": self.predicted,
            "note": self.note,
        }


def model_front(predicted: Mapping[int, Mapping[str, float]], signs: Mapping[str, float]) -> dict[int, float]:
    """Trial index -> predicted `trade_off` of the trials that no other trial dominates on predicted values (the
    in-sample predicted Pareto front; the objective thresholds play no part, so a front exists where no trial beats
    them)."""
    signed = {index: [sign * values[name] for name, sign in signs.items()] for index, values in predicted.items()}
    return {
        index: sum(score)
        for index, score in signed.items()
        if not any(dominates(other, score) for other in signed.values())
    }


def choose(
    records: Sequence[TrialRecord],
    signs: Mapping[str, float],
    rule: str,
    predicted: Mapping[int, float],
    note: str | None = None,
) -> Choice:
    """The final choice by ``rule``: ``observed``, the Pareto trial with the largest observed `trade_off`;
    ``predicted``, the trial on the model-predicted front with the largest predicted one (the observed rule when
    there is no prediction, with ``note`` saying so). A noisy trial that looks best only by luck wins the observed
    rule; the model pools nearby trials, which the replays in tests/benchmarks/search_quality.py weigh."""
    completed = {record.index for record in records if record.status is TrialState.COMPLETED}
    predicted = {index: value for index, value in predicted.items() if index in completed}
    if rule == "predicted" and predicted:
        index = max(predicted, key=predicted.__getitem__)
        record = records[index]
        return Choice(record, rule, trade_off(record, signs), predicted[index], note)
    record = choose_trial(records, signs)
    if rule == "predicted":
        return Choice(
            record,
            "observed",
            trade_off(record, signs),
            predicted.get(record.index),
            f"the observed rule: {note or 'no trial on the model-predicted front'}",
        )
    if note is None and record.index not in predicted:
        note = "not on the model-predicted front"
    return Choice(record, rule, trade_off(record, signs), predicted.get(record.index), note)


def choose_trial(records: Sequence[TrialRecord], signs: Mapping[str, float], trial: int | None = None) -> TrialRecord:
    """The Pareto trial with the best `trade_off`, or completed trial ``trial`` (``--select``)."""
    if trial is None:
        front = pareto_front(records, signs)
        if not front:
            raise UserError("no trial has completed yet, so there is no configuration to select; run more trials")
        return max(front, key=lambda record: trade_off(record, signs))
    completed = [record.index for record in records if record.status is TrialState.COMPLETED]
    if not 0 <= trial < len(records):
        raise UserError(f"--select {trial}: no such trial; completed trials are {completed}")
    record = records[trial]
    if record.status is not TrialState.COMPLETED:
        why = f" ({record.reason})" if record.reason else ""
        raise UserError(f"--select {trial}: that trial is {record.status}{why}; pick a completed one: {completed}")
    return record
