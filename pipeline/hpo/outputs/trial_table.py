"""The console table of a search's trials: parameters, λ3, objectives and status, the Pareto set starred,
the reference maps (and which of them set an objective threshold) below."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.hpo.ax_study.records import TrialRecord
from pipeline.hpo.ax_study.study import Study

_COLUMN_LABELS = {"road_morf_auc": "MoRF", "road_lerf_auc": "LeRF"}


def study_table(study: Study, references: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """`format_table` of all trials of ``study``, Pareto trials starred, reference maps (and the thresholds) below."""
    front = {record.index for record in study.pareto()}
    return format_table(study.records(), front, study.space.objective_names, references, study.thresholds)


def format_table(
    records: Sequence[TrialRecord],
    pareto_indices: set[int] | Sequence[int],
    objectives: Sequence[str] = ("road_morf_auc", "road_lerf_auc"),
    references: Mapping[str, Mapping[str, float]] | None = None,
    thresholds: Mapping[str, float] | None = None,
) -> str:
    """A fixed-width console table of all trials; ``*`` marks the Pareto set.

    ``references`` (label -> metrics, e.g. of random maps) are rows under the trials; a reference whose value
    is an objective threshold (``thresholds``) says so in its status."""
    parameter_names = list(dict.fromkeys(name for record in records for name in record.parameters))
    with_lambda3 = any(record.lambda3 is not None for record in records)
    header = ["", "trial", "generator", *parameter_names]
    header += ["lambda3"] * with_lambda3 + [_COLUMN_LABELS.get(name, name) for name in objectives] + ["status"]
    rows = [header]
    for record in records:
        status = record.status + (f": {record.reason}" if record.reason else "")
        row = ["*" if record.index in pareto_indices else "", str(record.index), record.generator]
        row += [_format_cell(record.parameters.get(name)) for name in parameter_names]
        row += [_format_cell(record.lambda3)] * with_lambda3
        row += [_format_cell(record.metrics.get(name)) for name in objectives] + [status]
        rows.append(row)
    separator = len(rows)
    for label, scores in (references or {}).items():
        sets = [
            _COLUMN_LABELS.get(name, name)
            for name in objectives
            if thresholds and name in thresholds and scores.get(name) == thresholds[name]
        ]
        status = "reference" + (f", objective threshold for {' and '.join(sets)}" if sets else "")
        row = ["", "-", label, *["-"] * (len(parameter_names) + with_lambda3)]
        rows.append(row + [_format_cell(scores.get(name)) for name in objectives] + [status])
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    rule = "  ".join("-" * width for width in widths)
    if len(rows) > separator:
        lines.insert(separator, rule)
    lines.insert(1, rule)
    return "\n".join(lines)


def _format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and 1e-9 < abs(value) < 1e-3:
        return f"{value:.3g}"  # a learning rate or weight decay, not 0.0000
    if isinstance(value, float):
        return f"{round(value, 4) + 0.0:.4f}"  # + 0.0 turns a rounded -0.0 into 0.0
    return str(value)
