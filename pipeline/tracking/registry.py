"""The final head's MLflow run and the Model Registry: the run samples system metrics, registers the explainer
(an MLflow pyfunc logged as code, `pipeline.tracking.serving`) and gives the version its description, tags and
alias."""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Mapping
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from pipeline.config import ExperimentConfig
from pipeline.tracking import serving
from pipeline.tracking.mlflow_seam import SystemMetrics, requirements_of_this_environment
from pipeline.tracking.runs import FAILURE_TAG, RunLog, Tracker
from pipeline.tracking.stores import fluent_tracking_uri
from pipeline.training.saved_head import CONFIG_FILE, COUNTS_FILE, HEAD_FILE, SUMMARY_FILE


def registered_model_name(backbone: str, auxiliary: str) -> str:
    """Registry name "ptame-<backbone>-<auxiliary>"; characters other than [A-Za-z0-9_.-] become _.

    e.g. ("timm:convnext_tiny", "resnet18") -> "ptame-timm_convnext_tiny-resnet18".
    """
    parts = [re.sub(r"[^A-Za-z0-9_.-]+", "_", part).strip("_") or "none" for part in (backbone, auxiliary)]
    return "-".join(["ptame", *parts])[:250]


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
        self._system_metrics = (
            SystemMetrics(run_id, system_metrics_interval_s, tracking_uri) if system_metrics_interval_s > 0 else None
        )

    def _end(self, status: str, reason: str | None = None, tag: str = FAILURE_TAG) -> None:
        if self._system_metrics is not None:
            self._system_metrics.stop()
            self._system_metrics = None
        super()._end(status, reason, tag)

    def log_explainer(
        self, head_directory: str | Path, config: ExperimentConfig, input_size: int, registered_name: str
    ) -> str:
        """Register the explainer in `head_directory` (written by `save_head`; its backbone takes
        `input_size` px images) as `registered_name` and return the new version; also log the plain
        head files (weights, config, training summary) under "head/".

        The model is an MLflow pyfunc logged as code (`pipeline.tracking.serving`), without pickle: images in, maps
        out, loadable with `mlflow.pyfunc.load_model("models:/NAME/VERSION")` in any process.
        """
        head_directory = Path(head_directory)
        # Created here because log_model would file it under the fluent (default) experiment.
        logged = self.client.create_logged_model(self.experiment_id, "explainer", source_run_id=self.run_id)
        # MLflow prints its own two lines about the registration on stderr; the caller reports the version.
        with (
            fluent_tracking_uri(self.tracking_uri),
            warnings.catch_warnings(),
            redirect_stderr(io.StringIO()),
            requirements_of_this_environment(),  # serving.requirements pins the installed versions
        ):
            # An input example would make MLflow load both networks again just to log it; the
            # signature already states the input, so its advice to add one is noise here.
            warnings.filterwarnings("ignore", message=".*An input example was not provided")
            info = Model.log(
                artifact_path=None,
                name="explainer",
                flavor=mlflow.pyfunc,
                python_model=str(serving.ENTRY_POINT),
                artifacts=serving.model_artifacts(head_directory, config),
                code_paths=[str(serving.PACKAGE)],
                signature=serving.signature(input_size),
                pip_requirements=serving.requirements(config),
                registered_model_name=registered_name,
                run_id=self.run_id,
                model_id=logged.model_id,
            )
        for name in (HEAD_FILE, CONFIG_FILE, SUMMARY_FILE, COUNTS_FILE):
            if (head_directory / name).is_file():
                self.log_artifact(head_directory / name, "head")
        return str(info.registered_model_version)

    def describe_version(self, name: str, version: str, description: str, tags: Mapping[str, str], alias: str) -> None:
        """Give registered version `version` of `name` its description and tags, and point `alias` at it
        (moved from the version it named before), so that "models:/NAME@ALIAS" loads it."""
        self.client.update_model_version(name, version, description=description)
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, value)
        self.client.set_registered_model_alias(name, alias, version)


def start_final(tracker: Tracker, params: Mapping[str, Any], system_metrics_interval_s: float = 10.0) -> FinalRunLog:
    """The search's child run "final-head"; system metrics every ``system_metrics_interval_s`` (0: off)."""
    run_id = tracker.child_run_id("final-head", {"role": "final"}, params)
    return FinalRunLog(tracker.client, run_id, tracker.tracking_uri, tracker.experiment_id, system_metrics_interval_s)
