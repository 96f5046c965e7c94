"""A 3-trial demo search command logged over HTTP to a real `mlflow server`, checked through the MLflow client."""

from __future__ import annotations

import mlflow.pyfunc
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.hpo.ax_study.study import Study
from pipeline.hpo.outputs.folder import FINAL_TRIAL, SearchFolder


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.mark.system
@pytest.mark.slow
def test_a_demo_search_over_http_leaves_everything_a_reviewer_needs(demo_search, monkeypatch):
    """The session's demo search command (conftest.py) logged to the session's server, where other searches log to
    the same "ptame" experiment."""
    assert demo_search.result.returncode == 0, demo_search.result.stdout + demo_search.result.stderr
    server, search = demo_search.tracking_uri, demo_search.name
    folder = SearchFolder(demo_search.folder)
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("ptame")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags and r.data.tags.get("search") == search]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    link = f"MLflow: {server}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
    assert demo_search.result.stdout.count(link + "\n") == 2  # when the search starts and when it ends
    description = parent.data.tags["mlflow.note.content"]
    assert "`lambda1` → `loss.lambda1`" in description and "percentages: [50]" in description
    assert "**Trials**: 3 of 3 completed" in description and "**Pareto set**" in description
    assert parent.data.params["backbone"] == "efficientnet_lite0"
    assert {"best_morf_auc", "best_lerf_auc", "best_lerf_minus_morf"} <= parent.data.metrics.keys()
    metrics = parent.data.metrics
    assert metrics["threshold_road_morf_auc"] == max(
        metrics["random_maps_road_morf_auc"], metrics["center_maps_road_morf_auc"]
    )
    assert metrics["threshold_road_lerf_auc"] == min(
        metrics["center_maps_road_lerf_auc"], metrics["random_maps_road_lerf_auc"]
    )
    assert Study.read(folder.directory, folder.space()).thresholds == {  # what Ax was configured with
        "road_morf_auc": parent.data.metrics["threshold_road_morf_auc"],
        "road_lerf_auc": parent.data.metrics["threshold_road_lerf_auc"],
    }
    parent_artifacts = artifact_paths(client, parent.info.run_id)
    assert "search_space/ptame.yaml" in parent_artifacts and "best.yaml" in parent_artifacts
    assert "ax/ax_experiment.json" in parent_artifacts
    assert any(p.startswith("ax/") and p.endswith(".html") for p in parent_artifacts)

    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trials = sorted((r for r in children if r.info.run_name.startswith("trial-")), key=lambda r: r.info.run_name)
    finals = [r for r in children if r.info.run_name == "final-head"]
    assert [r.info.run_name for r in trials] == ["trial-000", "trial-001", "trial-002"] and len(finals) == 1
    for run in trials:
        assert {"lambda1", "lambda2", "lambda3", "lambda_area", "config.loss.lambda1"} <= run.data.params.keys()
        metrics = run.data.metrics
        assert {"road_morf_auc", "road_lerf_auc", "road_morf_50", "road_lerf_50", "ad_100", "ic_15"} <= metrics.keys()
        steps = client.get_metric_history(run.info.run_id, "loss")
        assert len(steps) == 2 and {"loss_ce", "loss_area", "loss_variation"} <= metrics.keys()
        assert {"plots/explanations.png", "plots/road_curve.png"} <= artifact_paths(client, run.info.run_id)
    final = finals[0]
    assert {"road_morf_auc", "road_lerf_auc", "ad_50"} <= final.data.metrics.keys()
    assert any(key.startswith("system/") for key in final.data.metrics)
    assert {"plots/explanations.png", "head/head.pt", "head/training.json"} <= artifact_paths(client, final.info.run_id)
    assert {"contribution.blocks.1", "channel_share.blocks.6"} <= final.data.metrics.keys()
    name = demo_search.registered_model
    versions = client.search_model_versions(f"name='{name}'")
    assert len(versions) == 1 and versions[0].run_id == final.info.run_id
    version = client.get_model_version_by_alias(name, search)
    assert version.version == versions[0].version and version.aliases == [search]
    chosen = folder.state[FINAL_TRIAL]
    assert version.tags["search"] == search and version.tags["trial"] == str(chosen)
    assert version.tags["lambda1"] == f"{float(final.data.params['lambda1']):.4g}"
    assert {"lambda2", "lambda3", "lambda_area", "loss_form", "road_protocol"} <= version.tags.keys()
    assert "**efficientnet_lite0**" in version.description and "MoRF AUC" in version.description
    assert f"**Chosen**: trial {chosen} " in description and f"`models:/{name}@{search}` (version 1)" in description
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    assert mlflow.pyfunc.load_model(f"models:/{name}@{search}").metadata.run_id == final.info.run_id

    grid = Image.open(folder.trial(0) / "explanations.png")
    curve = Image.open(folder.trial(0) / "road_curve.png")
    assert grid.size[0] > 600 and grid.size[1] > 300 and curve.size[0] > 300
