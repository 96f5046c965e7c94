"""Ax's analyses of a search as HTML files, logged on the search's MLflow run under "ax/"."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from pipeline.hpo import ax_seam
from pipeline.tracking.runs import Tracker

_log = logging.getLogger(__name__)


def log_ax_analyses(tracker: Tracker, client: Any, directory: str | Path,
                    include_plotlyjs: bool | str = "cdn") -> list[Path]:
    """Export Ax analyses of `client` (an `ax.api.Client`) as HTML into `directory` and log
    them under "ax/": parallel coordinates and sensitivity per objective, the two objectives'
    observed scatter with the Pareto frontier, and the utility (hypervolume) progression.

    An analysis that errors or lacks data is skipped with a one-line note in the log. The HTML
    loads plotly.js from its CDN (pass include_plotlyjs=True to embed it, ~4 MB per file).
    """
    from ax.analysis.plotly import (
        ParallelCoordinatesPlot,
        PlotlyAnalysisCard,
        ScatterPlot,
        SensitivityAnalysisPlot,
        UtilityProgressionAnalysis,
    )

    objectives = list(ax_seam.experiment(client).optimization_config.objective.metric_names)
    analyses = [ParallelCoordinatesPlot(name) for name in objectives]
    analyses += [SensitivityAnalysisPlot(name) for name in objectives]
    if len(objectives) == 2:
        analyses.append(ScatterPlot(*objectives, use_model_predictions=False,
                                    show_pareto_frontier=True))
    analyses.append(UtilityProgressionAnalysis())

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for group in client.compute_analyses(analyses, display=False):
        for card in group.flatten():
            if not isinstance(card, PlotlyAnalysisCard):
                reason = (card.subtitle or str(card.blob)).strip().splitlines()[0]
                _log.info("Ax analysis %r skipped: %s", card.title, reason[:200])
                continue
            stem = re.sub(r"[^a-z0-9]+", "_", card.title.lower()).strip("_")
            path = directory / f"{stem}.html"
            figure = card.get_figure()
            if not figure.layout.title.text:
                figure.update_layout(title=card.title)
            figure.write_html(path, include_plotlyjs=include_plotlyjs)
            tracker.log_search_artifact(path, "ax")
            written.append(path)
    return written
