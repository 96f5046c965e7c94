"""MLflow tracking for a search: one parent run per search, a nested child run per trial, and a
nested run for the final head (registered in the Model Registry).

Everything goes through an `MlflowClient` with explicit run ids, so no global active run is used;
only `log_explainer` borrows MLflow's fluent model logging, with the tracking URI set for that call
alone. Step metrics are buffered and sent with `log_batch` (at most 1000 per request).
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, redirect_stderr
from pathlib import Path
from types import TracebackType
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from mlflow.utils.rest_utils import http_request
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)
from sqlalchemy.engine import make_url

from pipeline import serving
from pipeline.config import ExperimentConfig
from pipeline.errors import UserError
from pipeline.locking import exclusive_lock
from pipeline.train import CONFIG_FILE, COUNTS_FILE, HEAD_FILE, SUMMARY_FILE

_log = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
SUPPRESS_URL_ENV = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
PARENT_RUN_TAG = "mlflow.parentRunId"
FAILURE_TAG = "failure_reason"
FLUSH_INTERVAL_S = 30.0  # step metrics also go out this often, so the UI shows live curves
ELLIPSIS = "..."
HEALTH_TIMEOUT_S = 5.0  # a tracking server that does not answer /health in this time is reported unreachable


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Explicit `uri` > $MLFLOW_TRACKING_URI > MLflow's default (sqlite:///mlflow.db in the cwd)."""
    return uri or os.environ.get(TRACKING_URI_ENV) or mlflow.get_tracking_uri()


def is_tracking_server(uri: str) -> bool:
    """An http(s) tracking server, which any process (e.g. a Ray worker) may write to."""
    return uri.startswith(("http://", "https://"))


def check_tracking_server(uri: str | None) -> None:
    """Fail in one line within seconds when the tracking URI (`resolve_tracking_uri`) names an http(s) server
    that does not answer MLflow's ``/health``; MLflow itself would retry for minutes without a word."""
    resolved = resolve_tracking_uri(uri)
    if not is_tracking_server(resolved):
        return
    fix = "start the server, or give the right --tracking-uri (or $MLFLOW_TRACKING_URI)"
    try:
        response = http_request(get_default_host_creds(resolved), "/health", "GET", max_retries=0,
                                timeout=HEALTH_TIMEOUT_S, raise_on_status=False)
    except MlflowException as error:
        raise UserError(f"cannot reach the MLflow tracking server at {resolved} ({_connection_problem(error)}); "
                        f"{fix}") from None
    if response.status_code >= 500:
        raise UserError(f"the MLflow tracking server at {resolved} answers HTTP {response.status_code} to /health; "
                        f"{fix}")


def _connection_problem(error: MlflowException) -> str:
    """Why the connection failed ("Connection refused", "no answer within 5 s"), from MLflow's wrapped error."""
    text = str(error)
    if "timeout" in text.lower():
        return f"no answer within {HEALTH_TIMEOUT_S:g} s"
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return found.group(1) if found else text.splitlines()[0]


def _store_creation_lock(uri: str) -> AbstractContextManager[None]:
    """For a local SQLite store, an exclusive lock on ``<database>.lock`` beside it: the first use of a new
    database creates MLflow's tables, and two processes doing that at once (two searches started together in
    a new folder) fail with "table ... already exists"."""
    database = make_url(uri).database if uri.startswith("sqlite:") else None
    if not database or database == ":memory:":
        return nullcontext()
    path = Path(database)
    if not path.parent.is_dir():
        raise UserError(f"the folder of the MLflow database {path} does not exist; create it or give another "
                        "--tracking-uri")
    return exclusive_lock(path.with_name(f"{path.name}.lock"))


def registered_model_name(backbone: str, auxiliary: str) -> str:
    """Registry name "ptame-<backbone>-<auxiliary>"; characters other than [A-Za-z0-9_.-] become _.

    e.g. ("timm:convnext_tiny", "resnet18") -> "ptame-timm_convnext_tiny-resnet18".
    """
    parts = [re.sub(r"[^A-Za-z0-9_.-]+", "_", part).strip("_") or "none"
             for part in (backbone, auxiliary)]
    return "-".join(["ptame", *parts])[:250]


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
            flat[name] = _truncate(str(value), MAX_PARAM_VAL_LENGTH)
    return flat


def _now_ms() -> int:
    return int(time.time() * 1000)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextmanager
def _fluent_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at `uri` for one block, then restore the global and the env var
    (`mlflow.set_tracking_uri` also writes $MLFLOW_TRACKING_URI)."""
    env_before = os.environ.get(TRACKING_URI_ENV)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        if env_before is not None:
            os.environ[TRACKING_URI_ENV] = env_before


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
        self._pending.extend(
            Metric(key, float(value), timestamp, step) for key, value in metrics.items()
        )
        if (len(self._pending) >= MAX_METRICS_PER_BATCH
                or time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S):
            self.flush()

    def flush(self) -> None:
        """Send buffered step metrics, at most 1000 per request."""
        for chunk in _chunks(self._pending, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)
        self._pending = []
        self._last_flush = time.monotonic()

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log metrics now (e.g. ROAD AUCs; or one ROAD curve point with step = % removed)."""
        timestamp = _now_ms()
        entries = [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        for chunk in _chunks(entries, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params, flattened to dotted keys (see `flatten_params`)."""
        entries = [Param(key, value) for key, value in flatten_params(params).items()]
        for chunk in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags (e.g. which worker ran a trial), cut to MLflow's length limit."""
        entries = [RunTag(key, _truncate(str(value), MAX_TAG_VAL_LENGTH)) for key, value in tags.items()]
        for chunk in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
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

    def _end(self, status: str, reason: str | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            self.flush()
        finally:
            if reason is not None:
                self.client.set_tag(self.run_id, FAILURE_TAG, _truncate(reason, MAX_TAG_VAL_LENGTH))
            with _no_run_url_printing():
                self.client.set_terminated(self.run_id, status)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: TracebackType | None
    ) -> None:
        if error is None:
            self.finish()
        elif isinstance(error, Exception):
            self.fail(f"{kind.__name__}: {error}")
        else:
            self._end(RunStatus.to_string(RunStatus.KILLED), f"{kind.__name__}: {error}")


class FinalRunLog(RunLog):
    """The final head's run: system metrics (CPU/memory/disk/network, NVIDIA GPU when present)
    are sampled in a background thread until the run ends; `log_explainer` registers the model."""

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        tracking_uri: str,
        experiment_id: str,
        system_metrics_interval_s: float,
    ) -> None:
        super().__init__(client, run_id)
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self._monitor: SystemMetricsMonitor | None = None
        if system_metrics_interval_s > 0:
            self._monitor = SystemMetricsMonitor(
                run_id, sampling_interval=system_metrics_interval_s, tracking_uri=tracking_uri
            )
            self._monitor.start()

    def _end(self, status: str, reason: str | None = None) -> None:
        if self._monitor is not None:
            # Publish what was sampled so far: MLflow drops it on finish(), so a run shorter than
            # the sampling interval would otherwise end without any system metric.
            self._monitor.publish_metrics(self._monitor.aggregate_metrics())
            self._monitor.finish()
            self._monitor = None
        super()._end(status, reason)

    def log_explainer(self, head_directory: str | Path, config: ExperimentConfig, input_size: int,
                      registered_name: str) -> str:
        """Register the explainer in `head_directory` (written by `save_head`; its backbone takes
        `input_size` px images) as `registered_name` and return the new version; also log the plain
        head files (weights, config, training summary) under "head/".

        The model is an MLflow pyfunc logged as code (`pipeline.serving`), without pickle: images in, maps
        out, loadable with `mlflow.pyfunc.load_model("models:/NAME/VERSION")` in any process.
        """
        head_directory = Path(head_directory)
        # Created here because log_model would file it under the fluent (default) experiment.
        logged = self.client.create_logged_model(self.experiment_id, "explainer", source_run_id=self.run_id)
        # MLflow prints its own two lines about the registration on stderr; the caller reports the version.
        with _fluent_tracking_uri(self.tracking_uri), warnings.catch_warnings(), redirect_stderr(io.StringIO()):
            # An input example would make MLflow load both networks again just to log it; the
            # signature already states the input, so its advice to add one is noise here.
            warnings.filterwarnings("ignore", message=".*An input example was not provided")
            info = Model.log(
                artifact_path=None, name="explainer", flavor=mlflow.pyfunc, python_model=str(serving.ENTRY_POINT),
                artifacts=serving.model_artifacts(head_directory, config), code_paths=[str(serving.PACKAGE)],
                signature=serving.signature(input_size), pip_requirements=serving.requirements(config),
                registered_model_name=registered_name, run_id=self.run_id, model_id=logged.model_id,
            )
        for name in (HEAD_FILE, CONFIG_FILE, SUMMARY_FILE, COUNTS_FILE):
            if (head_directory / name).is_file():
                self.log_artifact(head_directory / name, "head")
        return str(info.registered_model_version)

    def describe_version(self, name: str, version: str, description: str, tags: Mapping[str, str],
                         alias: str) -> None:
        """Give registered version `version` of `name` its description and tags, and point `alias` at it
        (moved from the version it named before), so that "models:/NAME@ALIAS" loads it."""
        self.client.update_model_version(name, version, description=description)
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, value)
        self.client.set_registered_model_alias(name, alias, version)


class Tracker:
    """An MLflow experiment and the search run in it; hands out trial and final-head runs."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = "ptame") -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        with _store_creation_lock(self.tracking_uri):  # the first call creates the store
            self.client = MlflowClient(self.tracking_uri)
            self.experiment_id = self._experiment_id(experiment)
        self.search_run_id: str | None = None

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name)
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
        run_tags = {key: _truncate(str(value), MAX_TAG_VAL_LENGTH)
                    for key, value in (tags or {}).items()}
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
            _log.info("MLflow search run: %s/#/experiments/%s/runs/%s",
                      self.tracking_uri.rstrip("/"), self.experiment_id, run_id)
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

    def _create_run(self, experiment_id: str, name: str, tags: Mapping[str, str],
                    params: Mapping[str, Any]) -> RunLog:
        run = self.client.create_run(experiment_id, run_name=name, tags=dict(tags))
        log = RunLog(self.client, run.info.run_id)
        log.log_params(params)
        return log

    def _child_run(self, name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
        tags = {PARENT_RUN_TAG: self._search().run_id, **tags}
        return self._create_run(self.experiment_id, name, tags, params).run_id

    def log_search_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Search-level metrics (best MoRF, best LeRF, ...) with step = completed trials."""
        self._search().log_metrics(metrics, step)

    def log_search_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._search().log_artifact(path, artifact_path)

    def describe_search(self, markdown: str) -> None:
        """Set the search run's description (the note the MLflow UI shows on the run's page)."""
        self._search().set_tags({MLFLOW_RUN_NOTE: markdown})

    def log_ax_analyses(
        self, client: Any, directory: str | Path, include_plotlyjs: bool | str = "cdn"
    ) -> list[Path]:
        """Export Ax analyses of `client` (an `ax.api.Client`) as HTML into `directory` and log
        them under "ax/": parallel coordinates and sensitivity per objective, the two objectives'
        observed scatter with the Pareto frontier, and the utility (hypervolume) progression.

        An analysis that errors or lacks data is skipped with a one-line note in the log. The HTML
        loads plotly.js from its CDN (pass include_plotlyjs=True to embed it, ~4 MB per file).
        """
        from ax.analysis.plotly import (
            ParallelCoordinatesPlot,
            PlotlyAnalysisCard,
            ScatterPlot,
            SensitivityAnalysisPlot,
            UtilityProgressionAnalysis,
        )

        objectives = list(client._experiment.optimization_config.objective.metric_names)
        analyses = [ParallelCoordinatesPlot(name) for name in objectives]
        analyses += [SensitivityAnalysisPlot(name) for name in objectives]
        if len(objectives) == 2:
            analyses.append(ScatterPlot(*objectives, use_model_predictions=False,
                                        show_pareto_frontier=True))
        analyses.append(UtilityProgressionAnalysis())

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for group in client.compute_analyses(analyses, display=False):
            for card in group.flatten():
                if not isinstance(card, PlotlyAnalysisCard):
                    reason = (card.subtitle or str(card.blob)).strip().splitlines()[0]
                    _log.info("Ax analysis %r skipped: %s", card.title, reason[:200])
                    continue
                stem = re.sub(r"[^a-z0-9]+", "_", card.title.lower()).strip("_")
                path = directory / f"{stem}.html"
                figure = card.get_figure()
                if not figure.layout.title.text:
                    figure.update_layout(title=card.title)
                figure.write_html(path, include_plotlyjs=include_plotlyjs)
                self.log_search_artifact(path, "ax")
                written.append(path)
        return written

    def start_trial(self, index: int, params: Mapping[str, Any]) -> RunLog:
        """A child run "trial-003" for Ax trial 3, with its params."""
        run_id = self._child_run(f"trial-{index:03d}", {"trial_index": str(index)}, params)
        return RunLog(self.client, run_id)

    def start_final(
        self, params: Mapping[str, Any], system_metrics_interval_s: float = 10.0
    ) -> FinalRunLog:
        """The child run "final-head"; system metrics every `system_metrics_interval_s` (0: off)."""
        run_id = self._child_run("final-head", {"role": "final"}, params)
        return FinalRunLog(
            self.client, run_id, self.tracking_uri, self.experiment_id, system_metrics_interval_s
        )

    def start_run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None,
                  parent_run_id: str | None = None) -> RunLog:
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
