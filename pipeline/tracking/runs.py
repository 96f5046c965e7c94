"""MLflow tracking for a search: one parent run per search, a nested child run per trial, and a
nested run for the final head (registered in the Model Registry).

Everything goes through an `MlflowClient` with explicit run ids, so no global active run is used;
only `log_explainer` borrows MLflow's fluent model logging, with the tracking URI set for that call
alone. Step metrics are buffered and sent with `log_batch` (at most 1000 per request).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.tracking.mlflow_seam import DESCRIPTION_TAG, LIMITS
from pipeline.tracking.stores import (
    is_tracking_server,
    local_artifact_location,
    resolve_tracking_uri,
    store_creation_lock,
)

_log = logging.getLogger(__name__)

SUPPRESS_URL_ENV = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
PARENT_RUN_TAG = "mlflow.parentRunId"
FAILURE_TAG = "failure_reason"
STOP_TAG = "early_stop_reason"
FLUSH_INTERVAL_S = 30.0  # step metrics also go out this often, so the UI shows live curves
ELLIPSIS = "..."


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)] + ELLIPSIS


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts -> dotted keys ("loss.lambda1"); values stringified and cut to MLflow's limit."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = _truncate(str(value), LIMITS["param_length"])
    return flat


def _now_ms() -> int:
    return int(time.time() * 1000)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextmanager
def _no_run_url_printing() -> Iterator[None]:
    """MLflow prints two URL lines (and fetches the run) whenever a run ends over HTTP; a search
    would print hundreds. The search run's own end still prints them."""
    before = os.environ.get(SUPPRESS_URL_ENV)
    os.environ[SUPPRESS_URL_ENV] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(SUPPRESS_URL_ENV, None)
        else:
            os.environ[SUPPRESS_URL_ENV] = before


class RunLog:
    """One MLflow run (a trial or the final head). Also a context manager: an exception inside
    marks the run FAILED with the exception text and propagates; Ctrl-C marks it KILLED."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()
        self._ended = False

    def log_step(self, step: int, metrics: Mapping[str, float], timestamp_ms: int | None = None) -> None:
        """Buffer one training step's metrics (pass floats: a CUDA tensor here would sync); a step
        recorded elsewhere keeps its own ``timestamp_ms``."""
        timestamp = _now_ms() if timestamp_ms is None else timestamp_ms
        self._pending.extend(Metric(key, float(value), timestamp, step) for key, value in metrics.items())
        if len(self._pending) >= LIMITS["metrics_per_batch"] or time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Send buffered step metrics, at most 1000 per request."""
        for chunk in _chunks(self._pending, LIMITS["metrics_per_batch"]):
            self.client.log_batch(self.run_id, metrics=chunk)
        self._pending = []
        self._last_flush = time.monotonic()

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log metrics now (e.g. ROAD AUCs; or one ROAD curve point with step = % removed)."""
        timestamp = _now_ms()
        entries = [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        for chunk in _chunks(entries, LIMITS["metrics_per_batch"]):
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params, flattened to dotted keys (see `flatten_params`)."""
        entries = [Param(key, value) for key, value in flatten_params(params).items()]
        for chunk in _chunks(entries, LIMITS["params_tags_per_batch"]):
            self.client.log_batch(self.run_id, params=chunk)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags (e.g. which worker ran a trial), cut to MLflow's length limit."""
        entries = [RunTag(key, _truncate(str(value), LIMITS["tag_length"])) for key, value in tags.items()]
        for chunk in _chunks(entries, LIMITS["params_tags_per_batch"]):
            self.client.log_batch(self.run_id, tags=chunk)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or a directory."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self) -> None:
        """Flush and end the run as FINISHED."""
        self._end(RunStatus.to_string(RunStatus.FINISHED))

    def fail(self, reason: str) -> None:
        """Flush, tag `failure_reason`, and end the run as FAILED."""
        self._end(RunStatus.to_string(RunStatus.FAILED), reason)

    def stop(self, reason: str) -> None:
        """Flush, tag `STOP_TAG` with why the run was stopped early, and end it as KILLED."""
        self._end(RunStatus.to_string(RunStatus.KILLED), reason, STOP_TAG)

    def _end(self, status: str, reason: str | None = None, tag: str = FAILURE_TAG) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            self.flush()
        finally:
            if reason is not None:
                self.client.set_tag(self.run_id, tag, _truncate(reason, LIMITS["tag_length"]))
            with _no_run_url_printing():
                self.client.set_terminated(self.run_id, status)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: TracebackType | None) -> None:
        if error is None:
            self.finish()
        elif isinstance(error, Exception):
            self.fail(f"{type(error).__name__}: {error}")
        else:
            self._end(RunStatus.to_string(RunStatus.KILLED), f"{type(error).__name__}: {error}")


class Tracker:
    """An MLflow experiment and the search run in it; hands out trial and final-head runs."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = "ptame") -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        with store_creation_lock(self.tracking_uri):  # the first call creates the store
            self.client = MlflowClient(self.tracking_uri)
            self.experiment_id = self._experiment_id(experiment)
        self.search_run_id: str | None = None

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name, local_artifact_location(self.tracking_uri, name))
            except MlflowException:  # created meanwhile by another process
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            self.client.restore_experiment(found.experiment_id)
        return found.experiment_id

    def start_search(
        self,
        name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> str:
        """Create the search's parent run, or with `run_id` reopen it (resume): its trial runs
        still RUNNING were cut off by a crash and are marked FAILED; params already on the run
        keep their first value. Returns the run id."""
        run_tags = {key: _truncate(str(value), LIMITS["tag_length"]) for key, value in (tags or {}).items()}
        if run_id is None:
            run = self.client.create_run(self.experiment_id, tags=run_tags, run_name=name)
            run_id = run.info.run_id
            logged: Mapping[str, str] = {}
        else:
            reopened = self.client.get_run(run_id)
            self.experiment_id = reopened.info.experiment_id  # trials join the search's experiment
            logged = reopened.data.params
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            self._fail_interrupted_children(run_id)
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in run_tags.items()])
        self.search_run_id = run_id
        if is_tracking_server(self.tracking_uri):
            _log.info(
                "MLflow search run: %s/#/experiments/%s/runs/%s",
                self.tracking_uri.rstrip("/"),
                self.experiment_id,
                run_id,
            )
        fresh = {key: value for key, value in flatten_params(params).items() if key not in logged}
        RunLog(self.client, run_id).log_params(fresh)
        return run_id

    def _fail_interrupted_children(self, parent_id: str) -> None:
        stale = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_id}' and attributes.status = 'RUNNING'",
        )
        for run in stale:
            RunLog(self.client, run.info.run_id).fail("interrupted: the search process stopped")

    def _search(self) -> RunLog:
        if self.search_run_id is None:
            raise RuntimeError("start_search() first")
        return RunLog(self.client, self.search_run_id)

    def _create_run(self, experiment_id: str, name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> RunLog:
        run = self.client.create_run(experiment_id, run_name=name, tags=dict(tags))
        log = RunLog(self.client, run.info.run_id)
        log.log_params(params)
        return log

    def child_run_id(self, name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
        """A new run nested under the search run, with its tags and params; returns its id."""
        tags = {PARENT_RUN_TAG: self._search().run_id, **tags}
        return self._create_run(self.experiment_id, name, tags, params).run_id

    def log_search_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Search-level metrics (best MoRF, best LeRF, ...) with step = completed trials."""
        self._search().log_metrics(metrics, step)

    def log_search_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._search().log_artifact(path, artifact_path)

    def describe_search(self, markdown: str) -> None:
        """Set the search run's description (the note the MLflow UI shows on the run's page)."""
        self._search().set_tags({DESCRIPTION_TAG: markdown})

    def start_trial(self, index: int, params: Mapping[str, Any]) -> RunLog:
        """A child run "trial-003" for Ax trial 3, with its params."""
        run_id = self.child_run_id(f"trial-{index:03d}", {"trial_index": str(index)}, params)
        return RunLog(self.client, run_id)

    def start_run(
        self,
        name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> RunLog:
        """A run of its own (e.g. a comparison); with `parent_run_id` nested under that run, in its experiment."""
        run_tags = dict(tags or {})
        experiment_id = self.experiment_id
        if parent_run_id is not None:
            experiment_id = self.client.get_run(parent_run_id).info.experiment_id
            run_tags[PARENT_RUN_TAG] = parent_run_id
        return self._create_run(experiment_id, name, run_tags, params)

    def end_search(self, status: str = "FINISHED") -> None:
        """End the search run with `status` (FINISHED, FAILED or KILLED)."""
        self.client.set_terminated(self._search().run_id, status)
