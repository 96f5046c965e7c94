"""What several search tests share (test_search, test_parallel, test_early_stopping): the toy search's options and
the MLflow runs of a search's trials."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline.hpo.ax_study.space import load_search_space
from pipeline.hpo.driver import SearchOptions
from pipeline.resources import DEFAULT_SEARCH_SPACE
from tests.toy_models import toy_base, write_images

REPO = Path(__file__).resolve().parents[2]


def options(tmp_path: Path, trials: int) -> SearchOptions:
    space = load_search_space(DEFAULT_SEARCH_SPACE)
    return SearchOptions(
        name="toy",
        trials=trials,
        base=toy_base(write_images(tmp_path / "images")),
        space=space,
        space_path=DEFAULT_SEARCH_SPACE,
        seed=3,
        directory=tmp_path / "search" / "toy",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        progress=False,
        system_metrics=False,
    )


def trial_runs(tracking_uri: str, parent_run_id: str) -> dict:
    """The search's child runs by name."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    return {run.info.run_name: run for run in runs}
