"""Shared fixtures: one MLflow server, one Ray instance and one demo search command for the whole session,
the toy image folder.

Tiers (markers in pyproject.toml): ``system`` marks a test that starts a process, a server or Ray, or runs real
pretrained models; ``slow`` marks a long end-to-end run (a whole search, real models, BoTorch generations). The
unit tier is ``pytest -m "not system and not slow"``; plain ``pytest`` runs every tier.

Tests that share the server or Ray keep apart by what they create: their own MLflow experiment, search name or
registered model, and the run ids they were given. Under pytest-xdist (two workers by default, pyproject.toml)
"session" means a worker: each starts its own server, Ray or demo search once one of its tests needs it, and the
scheduler below keeps each of those users in one worker where it matters.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.mlflow_server import launch_mlflow_server, stop_mlflow_server, wait_for_mlflow_server

REPO = Path(__file__).resolve().parents[1]


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist each worker, and each command a test starts, takes its share of the cores for torch's
    intra-op threads, so that the workers do not oversubscribe them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_share_the_cores_between_workers()
_server: dict = {}  # the session's MLflow server, launched once collection shows that a test needs it
SYSTEM_FIXTURES = {"mlflow_server", "ray_address", "demo_search"}


# The files whose tests read the session's demo search command; they run in one pytest-xdist worker, so the
# search runs once. (Ray starts once per worker whose tests need it: hpo/test_parallel.py, hpo/test_early_stopping.py.)
DEMO_SEARCH_FILES = {"test_console.py", "test_mlflow_review.py", "test_registered_explainer.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the tiers honest: a test that uses the server, Ray or the demo search command is marked ``system``;
    keep the workers' schedule right: a test of the demo search is in one of DEMO_SEARCH_FILES; and run the files
    with slow tests first."""
    wrong = [
        item.nodeid
        for item in items
        if item.get_closest_marker("system") is None and SYSTEM_FIXTURES & set(item.fixturenames)
    ]
    if wrong:
        raise pytest.UsageError(
            "mark these tests @pytest.mark.system (they use a server, Ray or a command): " + ", ".join(wrong)
        )
    elsewhere = [
        item.nodeid for item in items if "demo_search" in item.fixturenames and item.path.name not in DEMO_SEARCH_FILES
    ]
    if elsewhere:
        raise pytest.UsageError(
            "add these tests' files to DEMO_SEARCH_FILES in tests/conftest.py: " + ", ".join(elsewhere)
        )
    with_slow_tests = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in with_slow_tests)  # long files first: no worker waits at the end


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under pytest-xdist (``-n 2`` in pyproject.toml), hand out whole files, so that a module's fixtures are built
    once, and the files of DEMO_SEARCH_FILES together."""
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "the demo search" if Path(path).name in DEMO_SEARCH_FILES else path

    return ByFile(config, log)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Without pytest-xdist, launch the MLflow server in the background as soon as the selected tests are known to
    need it, so that it starts while the tests before the first one that uses it run. (An xdist worker collects
    every test, and launches it only when one of its tests asks.)"""
    if "PYTEST_XDIST_WORKER" not in os.environ and any("mlflow_server" in item.fixturenames for item in session.items):
        _launch_server()


def _launch_server() -> None:
    if not _server:
        folder = Path(tempfile.mkdtemp(prefix="pytest-mlflow-server-"))
        uri, process = launch_mlflow_server(folder)
        _server.update(uri=uri, process=process, folder=folder)


@pytest.fixture(scope="session")
def mlflow_server() -> str:
    """The URI of one real `mlflow server` on 127.0.0.1 (SQLite store, proxied artifacts) for every test."""
    _launch_server()  # already launched, unless the fixture was requested in an unusual way
    try:
        wait_for_mlflow_server(_server["uri"], _server["process"], _server["folder"])
        yield _server["uri"]
    finally:
        stop_mlflow_server(_server["process"])
        shutil.rmtree(_server["folder"], ignore_errors=True)
        _server.clear()


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray instance (2 CPUs and 3 logical GPUs: Ray hands them out and sets CUDA_VISIBLE_DEVICES, the
    trials still run on the CPU) for in-process searches and for search commands that join it with
    ``--ray-address``; yields its address."""
    import ray

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        patch.setenv("PYTHONPATH", str(REPO))  # the workers import this checkout and the toy models
        auth_mode = os.environ.get("RAY_AUTH_MODE")
        ray.init(address="local", num_cpus=2, num_gpus=3, include_dashboard=False, logging_level=logging.WARNING)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()
            # ray.init turned on token authentication for this process and its children: undo that
            if auth_mode is None:
                os.environ.pop("RAY_AUTH_MODE", None)
            else:
                os.environ["RAY_AUTH_MODE"] = auth_mode


@dataclass
class DemoSearch:
    """A finished search command: its name, output, folder (``--out/NAME``) and MLflow tracking server."""

    name: str
    result: subprocess.CompletedProcess
    folder: Path
    tracking_uri: str
    registered_model: str = "ptame-efficientnet_lite0-efficientnet_lite1"  # no other test registers this name


# Per trial two training steps of 8 views, 9 validation views, ROAD at one percentage.
DEMO_SEARCH_SETTINGS = [
    "data.demo_train_views=16",
    "train.batch_size=8",
    "data.demo_eval_views=9",
    "evaluation.percentages=[50]",
    "evaluation.min_class_count=2",
]


@pytest.fixture(scope="session")
def demo_search(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str) -> DemoSearch:
    """One short real demo search, run as a user runs it: `python -m pipeline.search` on the offline demo (the real
    EfficientNet-Lite0 and Lite1), 3 trials of the paper's space with BoTorch from the third one, logged to the
    session's MLflow server, output to files and Python's warnings shown. Several tests check what it printed
    (end_to_end/test_console), what it logged for a reviewer (tracking/test_mlflow_review) and the final head it
    registered (tracking/test_registered_explainer)."""
    root = tmp_path_factory.mktemp("demo_search")
    space = root / "ptame.yaml"  # the paper's space, with BoTorch from the third trial
    space.write_text(
        (REPO / "search_spaces" / "ptame.yaml")
        .read_text()
        .replace("initialization_trials: 5\n", "initialization_trials: 2\n")
    )
    name = "review"
    command = [
        sys.executable,
        "-m",
        "pipeline.search",
        "--experiment",
        str(REPO / "experiments" / "demo.yaml"),
        "--space",
        str(space),
        "--trials",
        "3",
        "--name",
        name,
        "--out",
        str(root / "runs"),
        "--tracking-uri",
        mlflow_server,
    ]
    for override in DEMO_SEARCH_SETTINGS:
        command += ["--set", override]
    env = os.environ | {"PYTHONPATH": str(REPO), "PYTHONWARNINGS": "default"}  # warnings would show, if raised
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    return DemoSearch(name, result, root / "runs" / name, mlflow_server)


@pytest.fixture(autouse=True)
def _unit_tests_run_single_threaded(request: pytest.FixtureRequest):
    """A unit test (not ``system``) runs with one intra-op thread: its tensors are tiny, and a second thread
    spinning beside them costs CPU time for nothing (the unit tier, measured on a quiet 2-core machine: 72 CPU-s
    with two threads, 64 with one, the same wall time; on a busy one: 155 CPU-s and 104). A test about threads
    sets them itself."""
    if request.node.get_closest_marker("system") is not None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def single_thread():
    """One intra-op thread: on a shared 2-core machine, small multi-threaded ops are erratic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Twelve random 40 x 48 PNGs in two class folders, ``tmp_path/images``."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(6):
            pixels = (torch.rand(40, 48, 3, generator=generator) * 255).byte().numpy()
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
    return tmp_path / "images"
