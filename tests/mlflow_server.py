"""A real `mlflow server` process on 127.0.0.1 for tests (SQLite backend, local artifacts)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

STARTUP_TIMEOUT_S = 120.0


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def launch_mlflow_server(tmp_path: Path) -> tuple[str, subprocess.Popen]:
    """Start `mlflow server` with its store under `tmp_path` and return (uri, process) at once, before it answers.

    The caller waits with `wait_for_mlflow_server` and stops it with `stop_mlflow_server(process)`. The server
    log is `tmp_path/server.log`.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
    ]
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job runner processes
    log = open(tmp_path / "server.log", "wb")
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    return uri, process


def wait_for_mlflow_server(uri: str, pid: int, tmp_path: Path) -> None:
    """Return once the server launched in `tmp_path` (process `pid`) answers /health; raise if it dies or never
    does (the caller stops it)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not _healthy(uri):
        if not running(pid) or time.monotonic() > deadline:
            output = (tmp_path / "server.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"mlflow server did not come up at {uri}:\n{output}")
        time.sleep(0.25)


def running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def start_mlflow_server(tmp_path: Path) -> tuple[str, subprocess.Popen]:
    """Start `mlflow server` with its store under `tmp_path`; return (uri, process) once healthy.

    The caller stops it with `stop_mlflow_server(process)`. The server log is `tmp_path/server.log`.
    """
    uri, process = launch_mlflow_server(tmp_path)
    try:
        wait_for_mlflow_server(uri, process.pid, tmp_path)
    except RuntimeError:
        stop_mlflow_server(process)
        raise
    return uri, process


def stop_mlflow_server_group(pid: int) -> None:
    """Kill a server (`pid` leads its process group; another process may have launched it) and wait until it is gone.
    Its store goes with its temporary folder, so it gets no graceful shutdown (uvicorn's took 1 to 4 s)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 15
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def stop_mlflow_server(process: subprocess.Popen) -> None:
    """Kill the server and its workers (its own process group), then reap it."""
    stop_mlflow_server_group(process.pid)
    process.wait()
