"""Where a reviewer opens a search in MLflow: the experiment's link in the "Model training" view, and the command that
starts the UI on a local store."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from pipeline.tracking.stores import is_tracking_server

TRAINING_VIEW = "workflowType=machine_learning"


UI_HOST, UI_PORT = "127.0.0.1", 5000  # where `mlflow ui` listens by default


def experiment_url(server: str, experiment_id: str) -> str:
    """The experiment's page on a tracking server, in MLflow's "Model training" view (the runs table)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}?{TRAINING_VIEW}"


def ui_command(store_uri: str) -> str:
    """The command that serves MLflow's UI on a local store (a relative sqlite path made absolute)."""
    prefix = "sqlite:///"
    if store_uri.startswith(prefix) and not store_uri.startswith(prefix + "/"):
        store_uri = prefix + str(Path(store_uri[len(prefix) :]).resolve())
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    return f"{mlflow} ui --backend-store-uri {store_uri} --host {UI_HOST} --port {UI_PORT}"


def review_link(tracking_uri: str, experiment_id: str) -> str:
    """One console line: the experiment's link, after the command that starts the UI for a local store."""
    if is_tracking_server(tracking_uri):
        return f"MLflow: {experiment_url(tracking_uri, experiment_id)}"
    return (
        f"MLflow: start the UI with `{ui_command(tracking_uri)}`, then open "
        f"{experiment_url(f'http://{UI_HOST}:{UI_PORT}', experiment_id)}"
    )
