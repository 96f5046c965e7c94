"""Where runs go: the tracking URI (explicit, ``$MLFLOW_TRACKING_URI`` or MLflow's default), a quick health check of a
tracking server, a lock around the first use of a new local SQLite store, and where a local store's artifacts
live."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from sqlalchemy.engine import make_url

from pipeline.errors import UserError
from pipeline.locking import exclusive_lock
from pipeline.tracking.mlflow_seam import health_status

HEALTH_TIMEOUT_S = 5.0  # a tracking server that does not answer /health in this time is reported unreachable


def check_tracking_server(uri: str | None) -> None:
    """Fail in one line within seconds when the tracking URI (`resolve_tracking_uri`) names an http(s) server
    that does not answer MLflow's ``/health``; MLflow itself would retry for minutes without a word."""
    resolved = resolve_tracking_uri(uri)
    if not is_tracking_server(resolved):
        return
    fix = "start the server, or give the right --tracking-uri (or $MLFLOW_TRACKING_URI)"
    try:
        status = health_status(resolved, HEALTH_TIMEOUT_S)
    except MlflowException as error:
        raise UserError(
            f"cannot reach the MLflow tracking server at {resolved} ({_connection_problem(error)}); {fix}"
        ) from None
    if status >= 500:
        raise UserError(f"the MLflow tracking server at {resolved} answers HTTP {status} to /health; {fix}")


def _connection_problem(error: MlflowException) -> str:
    """Why the connection failed ("Connection refused", "no answer within 5 s"), from MLflow's wrapped error."""
    text = str(error)
    if "timeout" in text.lower():
        return f"no answer within {HEALTH_TIMEOUT_S:g} s"
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return found.group(1) if found else text.splitlines()[0]


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a local SQLite tracking URI; None for a server or an in-memory database."""
    database = make_url(uri).database if uri.startswith("sqlite:") else None
    return Path(database) if database and database != ":memory:" else None


def local_artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment of a local SQLite store keeps its artifacts: ``mlruns/<experiment>`` beside the
    database, not MLflow's default ``./mlruns`` in whatever folder the process started in. None (MLflow decides)
    for a tracking server."""
    database = _sqlite_file(uri)
    if database is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)
    return (database.resolve().parent / "mlruns" / folder).as_uri()


def store_creation_lock(uri: str) -> AbstractContextManager[None]:
    """For a local SQLite store, an exclusive lock on ``<database>.lock`` beside it: the first use of a new
    database creates MLflow's tables, and two processes doing that at once (two searches started together in
    a new folder) fail with "table ... already exists"."""
    path = _sqlite_file(uri)
    if path is None:
        return nullcontext()
    if not path.parent.is_dir():
        raise UserError(
            f"the folder of the MLflow database {path} does not exist; create it or give another --tracking-uri"
        )
    return exclusive_lock(path.with_name(f"{path.name}.lock"))


TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Explicit `uri` > $MLFLOW_TRACKING_URI > MLflow's default (sqlite:///mlflow.db in the cwd)."""
    return uri or os.environ.get(TRACKING_URI_ENV) or mlflow.get_tracking_uri()


@contextmanager
def fluent_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at `uri` for one block, then restore the global and the env var
    (`mlflow.set_tracking_uri` also writes $MLFLOW_TRACKING_URI)."""
    env_before = os.environ.get(TRACKING_URI_ENV)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        # mlflow takes None (no URI set: it unsets the env var too) but annotates str | Path only
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
        if env_before is not None:
            os.environ[TRACKING_URI_ENV] = env_before


def is_tracking_server(uri: str) -> bool:
    """An http(s) tracking server, which any process (e.g. a Ray worker) may write to."""
    return uri.startswith(("http://", "https://"))
