"""Tracking against a real `mlflow server` on 127.0.0.1: nested runs, buffered step metrics,
artifacts, failures, resume, Ax analyses and a registered final head."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow.utils import requirements_utils

from pipeline import config as configs
from pipeline.errors import UserError
from pipeline.hpo.ax_study.analyses import log_ax_analyses
from pipeline.tracking import registry, runs, serving, stores
from pipeline.tracking.registry import start_final
from pipeline.tracking.runs import Tracker
from pipeline.training.head_training import train_head
from pipeline.training.saved_head import save_head
from tests.toy_models import TOY_MODEL

REPO = Path(__file__).resolve().parents[2]
# Quiets the libraries and imports first, as a command does, says "ready", then creates the Tracker as soon as the
# file argv[2] exists.
CREATE_STORE = """
import sys, time
from pathlib import Path
from pipeline import quiet
quiet.quiet_libraries()
from pipeline.tracking.runs import Tracker
print("ready", flush=True)
while not Path(sys.argv[2]).exists():
    time.sleep(0.01)
print(Tracker(sys.argv[1], experiment="race").experiment_id)
"""


@pytest.fixture
def tracker(mlflow_server: str) -> Tracker:
    """A tracker on its own experiment of the session's server, with a search run started."""
    tracker = Tracker(mlflow_server, experiment=f"test-{uuid.uuid4().hex[:8]}")
    tracker.start_search("search", {"backbone": "vgg16", "trials": 3}, {"kind": "test"})
    return tracker


def test_resolve_tracking_uri_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = stores.resolve_tracking_uri(None)
    assert default.startswith("sqlite:///") and default.endswith(f"{tmp_path.name}/mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    assert stores.resolve_tracking_uri(None) == "http://from-env:5000"
    assert stores.resolve_tracking_uri("http://explicit:5000") == "http://explicit:5000"


def test_loading_a_registered_model_leaves_the_global_tracking_uri_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`load_registered` points MLflow's fluent API at the registry for the load only: a later default (or a test
    after it in the same process) still resolves as before."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = stores.resolve_tracking_uri(None)
    with pytest.raises(UserError, match="cannot load 'models:/absent/1' from the registry at sqlite:///"):
        serving.load_registered("models:/absent/1", f"sqlite:///{tmp_path / 'registry.db'}")
    assert stores.resolve_tracking_uri(None) == before
    assert "MLFLOW_TRACKING_URI" not in os.environ


@pytest.mark.parametrize(
    ("backbone", "auxiliary", "expected"),
    [
        ("efficientnet_lite0", "efficientnet_lite1", "ptame-efficientnet_lite0-efficientnet_lite1"),
        ("timm:convnext_tiny", "resnet18", "ptame-timm_convnext_tiny-resnet18"),
        ("mypkg.models:factory", "mobilenet_v3_small", "ptame-mypkg.models_factory-mobilenet_v3_small"),
        ("a/b c%", "", "ptame-a_b_c-none"),
    ],
)
def test_registered_model_name(backbone: str, auxiliary: str, expected: str) -> None:
    assert registry.registered_model_name(backbone, auxiliary) == expected


def test_flatten_params() -> None:
    flat = runs.flatten_params(
        {"loss": {"lambda1": 0.5, "area": {"exp": 2}}, "layers": ["layer1", "layer2"], "empty": {}, "long": "x" * 7000}
    )
    assert flat["loss.lambda1"] == "0.5" and flat["loss.area.exp"] == "2"
    assert flat["layers"] == "['layer1', 'layer2']" and flat["empty"] == "{}"
    assert len(flat["long"]) == 6000 and flat["long"].endswith("...")


@pytest.mark.system
def test_two_processes_creating_a_new_sqlite_store_at_once_both_succeed(tmp_path: Path) -> None:
    """Two searches started together in a new folder: MLflow's table creation is serialised by a lock, and
    creating the store writes nothing to stderr (MLflow and alembic log each migration)."""
    go = tmp_path / "go"
    command = [sys.executable, "-c", CREATE_STORE, f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}", str(go)]
    (tmp_path / "new").mkdir()
    env = os.environ | {"PYTHONPATH": str(REPO), "PYTHONWARNINGS": "default"}  # warnings would show, if raised
    processes = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for process in processes:
        assert process.stdout.readline() == "ready\n", process.communicate()[1]
    go.touch()
    results = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err[-2000:] for _, err in results]
    assert results[0][0] == results[1][0]  # one experiment, created once
    assert (tmp_path / "new" / "mlflow.db.lock").is_file()
    assert [err for _, err in results] == ["", ""]


def test_a_local_stores_artifacts_live_beside_its_database_not_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="a b/c")
    run_id = tracker.start_search("search", {"x": 1})
    tracker.client.log_text(run_id, "kept", "note.txt")
    location = tracker.client.get_experiment(tracker.experiment_id).artifact_location
    assert location == (tmp_path / "mlruns" / "a_b_c").as_uri()
    assert (tmp_path / "mlruns" / "a_b_c" / run_id / "artifacts" / "note.txt").read_text() == "kept"
    assert not any(elsewhere.iterdir())


def test_a_missing_database_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="folder of the MLflow database .*missing.* does not exist") as error:
        Tracker(f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")
    assert "\n" not in str(error.value)


def test_a_refusing_tracking_server_is_reported_at_once() -> None:
    started = time.perf_counter()
    with pytest.raises(UserError) as error:
        stores.check_tracking_server("http://127.0.0.1:9")
    assert time.perf_counter() - started < stores.HEALTH_TIMEOUT_S
    message = str(error.value)
    assert "http://127.0.0.1:9 (Connection refused)" in message and "--tracking-uri" in message
    assert "\n" not in message


def test_compare_and_explain_check_the_tracking_server_before_any_work() -> None:
    from pipeline.compare import parse_args as compare_args
    from pipeline.explain import registered_explainer

    with pytest.raises(UserError, match="cannot reach the MLflow tracking server"):
        compare_args(["--head", "missing", "--split", "val", "--tracking-uri", "http://127.0.0.1:9"])
    with pytest.raises(UserError, match="cannot reach the MLflow tracking server"):
        registered_explainer("models:/ptame-x/1", "http://127.0.0.1:9")


@pytest.mark.system
def test_a_failing_tracking_server_is_reported_and_a_healthy_one_passes(mlflow_server: str) -> None:
    class Failing(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    failing = HTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=failing.serve_forever, daemon=True).start()
    try:
        with pytest.raises(UserError, match="answers HTTP 503 to /health"):
            stores.check_tracking_server(f"http://127.0.0.1:{failing.server_port}")
    finally:
        failing.shutdown()
    stores.check_tracking_server(mlflow_server)
    stores.check_tracking_server("sqlite:///never-created.db")  # local stores are not probed


@pytest.mark.system
def test_trials_are_nested_with_params_steps_metrics_and_artifacts(tracker: Tracker, tmp_path: Path) -> None:
    client = MlflowClient(tracker.tracking_uri)
    artifact = tmp_path / "road.txt"
    artifact.write_text("MoRF 0.2\n")
    run_ids = []
    for index in range(3):
        with tracker.start_trial(index, {"loss": {"lambda1": 0.1 * index}, "lambda_area": 2}) as run:
            for step in range(50):
                run.log_step(step, {"loss": 1.0 / (step + 1), "ce": 0.5, "area": 0.2})
            run.log_metrics({"road_morf": 0.2, "road_lerf": 0.7})
            for percent, accuracy in [(10, 0.6), (50, 0.3)]:
                run.log_metrics({"road_morf_curve": accuracy}, step=percent)
            run.log_artifact(artifact, "plots")
        run_ids.append(run.run_id)
    tracker.log_search_metrics({"best_lerf_minus_morf": 0.5}, step=3)
    tracker.describe_search("**search** of 3 trials")
    tracker.end_search()

    for index, run_id in enumerate(run_ids):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.info.run_name == f"trial-{index:03d}"
        assert run.data.tags["mlflow.parentRunId"] == tracker.search_run_id
        assert run.data.params["loss.lambda1"] == str(0.1 * index)
        assert run.data.metrics["road_lerf"] == 0.7
        assert len(client.get_metric_history(run_id, "loss")) == 50
        assert [m.step for m in client.get_metric_history(run_id, "road_morf_curve")] == [10, 50]
        assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/road.txt"]
    search = client.get_run(tracker.search_run_id)
    assert search.info.status == "FINISHED" and search.data.params["trials"] == "3"
    assert search.data.tags["kind"] == "test" and search.data.tags["mlflow.note.content"] == "**search** of 3 trials"


@pytest.mark.system
def test_failed_trial_is_marked_failed_with_reason(tracker: Tracker) -> None:
    with pytest.raises(RuntimeError, match="loss is NaN"):
        with tracker.start_trial(7, {"lambda1": 0.9}) as run:
            run.log_step(0, {"loss": float("nan")})
            raise RuntimeError("loss is NaN at step 0")
    failed = MlflowClient(tracker.tracking_uri).get_run(run.run_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["failure_reason"] == "RuntimeError: loss is NaN at step 0"

    explicit = tracker.start_trial(8, {})
    explicit.fail("diverged")
    tags = MlflowClient(tracker.tracking_uri).get_run(explicit.run_id).data.tags
    assert tags["failure_reason"] == "diverged"


@pytest.mark.system
def test_resume_reopens_search_and_fails_interrupted_trials(tracker: Tracker) -> None:
    interrupted = tracker.start_trial(0, {"lambda1": 0.3})  # the process "dies" here
    experiment = tracker.client.get_experiment(tracker.experiment_id).name
    resumed = Tracker(tracker.tracking_uri, experiment=experiment)
    run_id = resumed.start_search(
        "search", {"backbone": "vgg16", "trials": 5, "resumed": True}, {}, run_id=tracker.search_run_id
    )
    client = MlflowClient(tracker.tracking_uri)
    search = client.get_run(run_id)
    assert run_id == tracker.search_run_id and search.info.status == "RUNNING"
    assert search.data.params["trials"] == "3" and search.data.params["resumed"] == "True"
    stale = client.get_run(interrupted.run_id)
    assert stale.info.status == "FAILED" and stale.data.tags["failure_reason"].startswith("interrupted")


@pytest.mark.system
def test_final_explainer_is_logged_and_registered(
    tracker: Tracker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    name = registry.registered_model_name("tests.toy_models:tiny_classifier", f"toy-{uuid.uuid4().hex[:6]}")
    config = configs.from_dict(
        {
            "model": TOY_MODEL,
            "data": {"demo_train_views": 8},
            "train": {"batch_size": 4},
            "evaluation": {"min_class_count": 1},
        }
    )
    head = save_head(train_head(config, progress=False), tmp_path / "head")

    scans: list[str] = []  # MLflow reading every installed package's files to check the requirements
    with (
        monkeypatch.context() as patch,
        start_final(tracker, {"loss": {"lambda1": 0.6}}, system_metrics_interval_s=0.5) as final,
    ):
        patch.setattr(requirements_utils, "_init_modules_to_packages_map", lambda: scans.append("scan"))
        final.log_step(0, {"loss": 0.5})
        version = final.log_explainer(head, config, 32, name)
        final.describe_version(name, version, "a toy explainer", {"search": "toy"}, "toy-search")
        time.sleep(1.5)
    assert scans == []  # the requirements are this environment's own versions: the check is skipped
    assert "MLFLOW_TRACKING_URI" not in os.environ  # log_explainer restored the env

    client = MlflowClient(tracker.tracking_uri)
    versions = client.search_model_versions(f"name='{name}'")
    assert version == "1" and [v.version for v in versions] == ["1"]
    run = client.get_run(final.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "final-head"
    assert run.data.tags["mlflow.parentRunId"] == tracker.search_run_id
    assert any(key.startswith("system/cpu") for key in run.data.metrics)
    assert {a.path for a in client.list_artifacts(final.run_id, "head")} >= {"head/head.pt", "head/config.yaml"}
    [model] = client.search_logged_models([tracker.experiment_id])  # in our experiment, not "0"
    assert model.source_run_id == final.run_id and model.status == "READY"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.tracking_uri)
    described = client.get_model_version_by_alias(name, "toy-search")
    assert (described.version, described.description, described.tags) == ("1", "a toy explainer", {"search": "toy"})
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@toy-search")  # logged as code: no pickle opt-in needed
    images = (torch.rand(3, 40, 50, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()
    result = loaded.predict(images)
    assert result["saliency"].shape == (3, 32, 32) and result["classes"].shape == result["coverage"].shape == (3,)


@pytest.mark.system
def test_ax_analyses_are_exported_and_logged(
    tracker: Tracker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from ax.api import ChoiceParameterConfig, Client, RangeParameterConfig

    client = Client(random_seed=0)
    client.configure_experiment(
        parameters=[
            RangeParameterConfig(name="lambda1", parameter_type="float", bounds=(0.0, 1.0)),
            RangeParameterConfig(name="lambda2", parameter_type="float", bounds=(0.0, 1.0)),
            ChoiceParameterConfig(name="lambda_area", parameter_type="float", values=[0.5, 1.0, 2.0], is_ordered=True),
        ],
        parameter_constraints=["lambda1 + lambda2 <= 1"],
    )
    client.configure_optimization(objective="-road_morf, road_lerf")
    client.configure_generation_strategy(initialization_budget=5, initialize_with_center=False)
    for index, params in client.get_next_trials(max_trials=3).items():
        client.complete_trial(
            index, {"road_morf": 0.3 * params["lambda1"] + 0.1, "road_lerf": 0.8 - 0.2 * params["lambda2"]}
        )

    with caplog.at_level(logging.INFO, logger="pipeline.hpo.ax_study.analyses"):
        written = log_ax_analyses(tracker, client, tmp_path / "ax")
    names = sorted(path.name for path in written)
    assert names == [
        "observed_effects_road_morf_vs_road_lerf.html",
        "parallel_coordinates_for_road_lerf.html",
        "parallel_coordinates_for_road_morf.html",
        "utility_progression.html",
    ]
    assert all(path.stat().st_size > 1000 for path in written)
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 2 and all("\n" not in line for line in skipped)  # sensitivity x2
    logged = MlflowClient(tracker.tracking_uri).list_artifacts(tracker.search_run_id, "ax")
    assert sorted(Path(a.path).name for a in logged) == names
