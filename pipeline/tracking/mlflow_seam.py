"""The one door to MLflow beyond its client and fluent API.

A search needs a few things MLflow keeps in its internals: the request limits of its REST API, the tag its UI shows
as a run's description, a single health probe without its client's minutes of retries, the system-metrics sampler on
a run it did not start with the fluent API, and a model logged without a requirements check that cannot fail. Each is
here, with the reason, so an MLflow upgrade that moves one breaks this module (and the tests that use it), not the
tracking code. ``pyproject.toml`` caps ``mlflow`` below the next release line that was not tried.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.utils import environment
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from mlflow.utils.rest_utils import http_request
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

# What a tracking server accepts per request and per value; larger batches or values are refused, not cut.
LIMITS = {
    "metrics_per_batch": MAX_METRICS_PER_BATCH,
    "params_tags_per_batch": MAX_PARAMS_TAGS_PER_BATCH,
    "param_length": MAX_PARAM_VAL_LENGTH,
    "tag_length": MAX_TAG_VAL_LENGTH,
}
DESCRIPTION_TAG = MLFLOW_RUN_NOTE  # the run's description in the UI ("mlflow.note.content")


def health_status(server: str, timeout_s: float) -> int:
    """The HTTP status of the server's ``/health``, asked once. MLflow's client retries a dead server for minutes;
    its REST helper with ``max_retries=0`` answers at once and sends the same credentials (basic auth, token).
    Raises `mlflow.exceptions.MlflowException` when nothing answers."""
    response = http_request(
        get_default_host_creds(server), "/health", "GET", max_retries=0, timeout=timeout_s, raise_on_status=False
    )
    return response.status_code


class SystemMetrics:
    """CPU, memory, disk, network (and NVIDIA GPU) samples logged on a run every ``interval_s`` until `stop`.
    MLflow starts its sampler only for fluent runs; this drives its monitor on a run of the client API."""

    def __init__(self, run_id: str, interval_s: float, tracking_uri: str) -> None:
        self._monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=tracking_uri)
        self._monitor.start()

    def stop(self) -> None:
        """Publish what was sampled so far (MLflow drops it on finish, so a run shorter than the interval would end
        without any system metric) and stop sampling."""
        self._monitor.publish_metrics(self._monitor.aggregate_metrics())
        self._monitor.finish()


@contextmanager
def requirements_of_this_environment() -> Iterator[None]:
    """Log a model whose pip requirements are this environment's own installed versions without MLflow checking them
    against this environment: to do so it reads the file list of every installed package (0.8 s on a 2-core machine,
    once per process), and versions read from this environment cannot differ from it."""
    with mock.patch.object(environment, "warn_dependency_requirement_mismatches", lambda requirements: None):
        yield
