"""Shared fixtures: one MLflow server, one Ray instance and one demo search command for the whole session,
the toy image folder.

Tiers (markers in pyproject.toml): ``system`` marks a test that starts a process, a server or Ray, or runs real
pretrained models; ``slow`` marks a long end-to-end run (a whole search, real models, BoTorch generations). The
unit tier is ``pytest -m "not system and not slow"``; plain ``pytest`` runs every tier.

Tests that share the server or Ray keep apart by what they create: their own MLflow experiment, search name or
registered model, and the run ids they were given. Under pytest-xdist (two workers by default, pyproject.toml)
the workers share one MLflow server (the first that needs it launches it, the controller stops it at the end), and
"session" means a worker for Ray and the demo search: the scheduler below keeps each one's users in one worker.
Torch is imported where a test runs, not at the top: the controller would wait 1.4 s for it before starting the
workers.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.locking import exclusive_lock
from tests.mlflow_server import (
    launch_mlflow_server,
    stop_mlflow_server,
    stop_mlflow_server_group,
    wait_for_mlflow_server,
)

REPO = Path(__file__).resolve().parents[1]


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist each worker, and each command a test starts, takes its share of the cores for torch's
    intra-op threads, so that the workers do not oversubscribe them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _exit_without_teardown() -> None:
    """A pytest-xdist worker whose results are sent leaves without freeing every module and object one by one
    (seconds of work that the controller waits for). Registered before torch, Ray or Ax is imported, it runs after
    their own exit handlers."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if "PYTEST_XDIST_WORKER" in os.environ:
    atexit.register(_exit_without_teardown)
_share_the_cores_between_workers()

_server: dict = {}  # the session's MLflow server, launched once collection shows that a test needs it
# Under pytest-xdist: the folder (made by the controller) where the workers record the MLflow server they share.
SHARED_FOLDER_ENV = "PTAME_TESTS_SHARED_FOLDER"
SERVER_RECORD = "mlflow_server.json"
SYSTEM_FIXTURES = {"mlflow_server", "ray_address", "demo_search"}


# Files whose tests share a session fixture too costly to build twice run in one pytest-xdist worker, as one scope:
# the demo search command, and a local Ray instance. (Paths under tests/.)
SHARED_SCOPES = {
    "the demo search": (
        "demo_search",
        {"end_to_end/test_console.py", "tracking/test_mlflow_review.py", "tracking/test_registered_explainer.py"},
    ),
    "Ray": ("ray_address", {"hpo/test_parallel.py", "hpo/test_early_stopping.py"}),
}
# Seconds per file in a plain `pytest` run (two workers, a 2-core machine, 2026-12-07 at 019363e), for the order only:
# the workers take the longest scopes first, so that neither waits for the other at the end (a file not listed here
# counts as 0 s; every one of those took under 3 s). Refresh with `pytest --durations=0` after a large change in a
# test's size.
FILE_SECONDS = {
    "hpo/test_parallel.py": 97,
    "end_to_end/test_console.py": 41,
    "hpo/test_early_stopping.py": 38,
    "models/test_castream.py": 28,
    "end_to_end/test_product_card.py": 26,
    "hpo/test_search.py": 17,
    "tracking/test_tracking.py": 14,
    "models/test_coverage.py": 14,
    "baselines/test_baselines.py": 14,
    "hpo/test_study.py": 11,
    "metrics/test_road_meaning.py": 11,
    "evaluation/test_blockwise_eval.py": 11,
    "tracking/test_registered_explainer.py": 10,
    "training/test_learning.py": 9,
    "config/test_resources.py": 8,
    "data/test_batches.py": 7,
    "commands/test_train_cli.py": 4,
    "tracking/test_mlflow_review.py": 3,
}


def under_tests(path: str | Path) -> str:
    """A test file's path under tests/, e.g. ``hpo/test_parallel.py`` (a file elsewhere: its whole path)."""
    path = Path(path).resolve()
    return path.relative_to(REPO / "tests").as_posix() if path.is_relative_to(REPO / "tests") else path.as_posix()


def scope_of(path: str | Path) -> str:
    """The pytest-xdist scope of a test file: its SHARED_SCOPES name, or the file itself."""
    name = under_tests(path)
    return next((scope for scope, (_, files) in SHARED_SCOPES.items() if name in files), name)


def scope_seconds(items: list[pytest.Item]) -> dict[str, int]:
    """Each scope's seconds by FILE_SECONDS."""
    seconds: dict[str, int] = {}
    for path in {item.path for item in items}:
        scope = scope_of(path)
        seconds[scope] = seconds.get(scope, 0) + FILE_SECONDS.get(under_tests(path), 0)
    return seconds


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the tiers honest: a test that uses the server, Ray or the demo search command is marked ``system``;
    keep the workers' schedule right: a test that uses a shared fixture is in its SHARED_SCOPES files; and run the
    longest scopes first."""
    wrong = [
        item.nodeid
        for item in items
        if item.get_closest_marker("system") is None and SYSTEM_FIXTURES & set(item.fixturenames)
    ]
    if wrong:
        raise pytest.UsageError(
            "mark these tests @pytest.mark.system (they use a server, Ray or a command): " + ", ".join(wrong)
        )
    for scope, (fixture, files) in SHARED_SCOPES.items():
        users = [item for item in items if fixture in item.fixturenames]
        elsewhere = [item.nodeid for item in users if under_tests(item.path) not in files]
        if elsewhere:
            raise pytest.UsageError(
                f"add these tests' files to SHARED_SCOPES[{scope!r}] in tests/conftest.py: " + ", ".join(elsewhere)
            )
    seconds = scope_seconds(items)
    items.sort(key=lambda item: -seconds[scope_of(item.path)])  # stable: a file keeps its tests' order


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under pytest-xdist (``-n 2`` in pyproject.toml), hand out whole files, so that a module's fixtures are built
    once, and the files of a SHARED_SCOPES entry together, in the order pytest_collection_modifyitems left them."""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # xdist would otherwise put the scopes with the most tests first

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(REPO / nodeid.split("::", 1)[0])

    return ByFile(config, log)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Without pytest-xdist, launch the MLflow server in the background as soon as the selected tests are known to
    need it, so that it starts while the tests before the first one that uses it run. (An xdist worker collects
    every test, and launches it only when one of its tests asks.)"""
    if "PYTEST_XDIST_WORKER" not in os.environ and any("mlflow_server" in item.fixturenames for item in session.items):
        _launch_server()


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, the controller makes the folder where its workers share one MLflow server; a process that
    only inherited a worker's environment (e.g. a pytest run that a test starts) exits as usual."""
    if not hasattr(config, "workerinput"):
        atexit.unregister(_exit_without_teardown)
        if getattr(config.option, "numprocesses", None):
            os.environ[SHARED_FOLDER_ENV] = tempfile.mkdtemp(prefix="pytest-shared-")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop a server launched early whose fixture never ran (e.g. the run stopped first); under pytest-xdist the
    controller stops the workers' shared server, once every worker has finished."""
    if "process" in _server:
        stop_mlflow_server(_server["process"])
        shutil.rmtree(_server["folder"], ignore_errors=True)
        _server.clear()
    if hasattr(config, "workerinput") or (folder := os.environ.pop(SHARED_FOLDER_ENV, None)) is None:
        return
    record = Path(folder) / SERVER_RECORD
    if record.exists():
        stop_mlflow_server_group(json.loads(record.read_text())["pid"])
    shutil.rmtree(folder, ignore_errors=True)


def _launch_server() -> None:
    """Launch this process's MLflow server, or under pytest-xdist the workers' shared one, unless already done."""
    if _server:
        return
    shared = os.environ.get(SHARED_FOLDER_ENV)
    if shared is None:
        folder = Path(tempfile.mkdtemp(prefix="pytest-mlflow-server-"))
        uri, process = launch_mlflow_server(folder)
        _server.update(uri=uri, pid=process.pid, folder=folder, process=process)
        return
    record = Path(shared) / SERVER_RECORD
    with exclusive_lock(Path(shared) / "mlflow_server.lock"):
        if not record.exists():  # the first worker to need it launches it; the controller stops it
            folder = Path(shared) / "mlflow_server"
            uri, process = launch_mlflow_server(folder)
            record.write_text(json.dumps({"uri": uri, "pid": process.pid, "folder": str(folder)}))
    launched = json.loads(record.read_text())
    _server.update(uri=launched["uri"], pid=launched["pid"], folder=Path(launched["folder"]))


@pytest.fixture(scope="session")
def mlflow_server() -> str:
    """The URI of one real `mlflow server` on 127.0.0.1 (SQLite store, proxied artifacts) for every test."""
    _launch_server()  # already launched, unless the fixture was requested in an unusual way
    try:
        wait_for_mlflow_server(_server["uri"], _server["pid"], _server["folder"])
        yield _server["uri"]
    finally:
        if "process" in _server:  # this process's own server (without pytest-xdist)
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
    with _one_intra_op_thread():
        yield


@pytest.fixture
def single_thread():
    """One intra-op thread: on a shared 2-core machine, small multi-threaded ops are erratic."""
    with _one_intra_op_thread():
        yield


@contextmanager
def _one_intra_op_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Twelve random 40 x 48 PNGs in two class folders, ``tmp_path/images``."""
    import torch
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(6):
            pixels = (torch.rand(40, 48, 3, generator=generator) * 255).byte().numpy()
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
    return tmp_path / "images"
