"""Ax's analyses of a search as HTML files, logged on the search's MLflow run under "ax/"."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from pipeline.hpo.ax_study import ax_seam
from pipeline.tracking.runs import Tracker

_log = logging.getLogger(__name__)


def log_ax_analyses(
    tracker: Tracker, client: Any, directory: str | Path, include_plotlyjs: bool | str = "cdn"
) -> list[Path]:
    """Export Ax's analyses of ``client`` (`ax_seam.analysis_figures`) as HTML into ``directory`` and log them
    under "ax/". An analysis that errors or lacks data is skipped with a one-line note in the log. The HTML
    loads plotly.js from its CDN (``include_plotlyjs=True`` embeds it, ~4 MB per file)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    figures, skipped = ax_seam.analysis_figures(client)
    for title, reason in skipped:
        _log.info("Ax analysis %r skipped: %s", title, reason[:200])
    written: list[Path] = []
    for title, figure in figures:
        path = directory / f"{re.sub(r'[^a-z0-9]+', '_', title.lower()).strip('_')}.html"
        figure.write_html(path, include_plotlyjs=include_plotlyjs)
        tracker.log_search_artifact(path, "ax")
        written.append(path)
    return written
