"""One search trial's work: train a head, score it at its checkpoints and on the validation split, draw its plots.

The same `TrialWorker` runs in the search process (``--parallel 1``, `InProcessPool`) and inside each
Ray worker (`pipeline.hpo.trials.ray_pool`). It never talks to Ax; its only MLflow contact is the optional
``on_step`` callback. At each checkpoint (`pipeline.config.CheckpointConfig`) it scores the head on the first
validation images and asks the trial's `StoppingRule`, made by the search process when the trial started, whether to
stop there. What a trial produced comes back as a plain, picklable `TrialResult`, and the
search process records it (Ax, MLflow, the trial folder).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import ExperimentConfig
from pipeline.data.sources import dataset_size
from pipeline.evaluation.scoring import EvalSet, Evaluation, evaluate_head, prepare_eval_set
from pipeline.hpo.ax_study.early_stopping import StoppingRule, noise_key
from pipeline.metrics.road_noise import auc_standard_error
from pipeline.models.explainer import Explainer
from pipeline.reports.figures import grid_and_curve
from pipeline.training.checkpoints import Checkpoints, StopTraining
from pipeline.training.head_training import TrainedHead, Workbench, train_head
from pipeline.training.loop import StepCallback

Trainer = Callable[..., TrainedHead]


def failure_reason(error: BaseException) -> str:
    """``"TrainingDiverged: loss is nan at step 3"``: what a failed trial records as its reason."""
    return f"{type(error).__name__}: {error}".strip()


@dataclass
class Step:
    """One training step's metrics, kept when no live ``on_step`` logger was given."""

    step: int
    metrics: dict[str, float]
    timestamp_ms: int


@dataclass
class TrialResult:
    """What a trial produced: metrics (objectives and extras), PNGs by file name, the recorded steps
    (empty when they were logged live), the seconds the work took, the scores at each checkpoint (percentage ->
    `checkpoint_scores`) and, for a trial stopped at its last checkpoint, why (its metrics are that checkpoint's)."""

    metrics: dict[str, float]
    plots: dict[str, bytes]
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0
    checkpoints: dict[int, dict[str, float]] = field(default_factory=dict)
    stopped: str | None = None


def checkpoint_scores(evaluation: Evaluation) -> dict[str, float]:
    """The ROAD AUCs of a checkpoint and their standard errors over its images (`auc_standard_error`)."""
    road, scores = evaluation.road, {}
    for order in ("morf", "lerf"):
        name = f"road_{order}_auc"
        scores[name] = getattr(road, f"{order}_auc")
        scores[noise_key(name)] = auc_standard_error(road.percentages, getattr(road, order), evaluation.images)
    return scores


class TrialWorker:
    """Runs trials in one process on models, data and a validation set loaded once."""

    def __init__(
        self, bench: Workbench, val_set: EvalSet, trainer: Trainer = train_head, progress: bool = False
    ) -> None:
        self.bench = bench
        self.val_set = val_set
        self.trainer = trainer
        self.progress = progress
        self._checkpoint_set: EvalSet | None = None
        self.where = {"host": socket.gethostname(), "pid": str(os.getpid()), "device": str(bench.models.device)}
        if os.environ.get("CUDA_VISIBLE_DEVICES"):
            self.where["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]

    @classmethod
    def load(cls, base: ExperimentConfig, trainer: Trainer = train_head, progress: bool = False) -> TrialWorker:
        """Load the frozen models, the data and the classified validation split of ``base``."""
        bench = Workbench.load(base)
        val_set = prepare_eval_set(
            bench.models.classifier, bench.splits.val, base.evaluation.batch_size, num_workers=base.data.num_workers
        )
        return cls(bench, val_set, trainer, progress)

    def checkpoint_set(self, images: int) -> EvalSet:
        """The first ``images`` validation images, classified once: every trial's checkpoints score these (the
        validation set itself when it has no more)."""
        if images >= len(self.val_set):
            return self.val_set
        wanted = min(images, dataset_size(self.bench.splits.val))
        if self._checkpoint_set is None or len(self._checkpoint_set) != wanted:
            self._checkpoint_set = prepare_eval_set(
                self.bench.models.classifier,
                self.bench.splits.val,
                self.bench.config.evaluation.batch_size,
                limit=images,
                num_workers=self.bench.config.data.num_workers,
            )
        return self._checkpoint_set

    def run(
        self,
        index: int,
        config: ExperimentConfig,
        on_step: StepCallback | None = None,
        rule: StoppingRule | None = None,
    ) -> TrialResult:
        """Train and evaluate trial ``index``, stopped at a checkpoint where ``rule`` says so; steps go to ``on_step``
        when given, else into the result."""
        started = time.perf_counter()
        steps: list[Step] = []
        checkpoints: dict[int, dict[str, float]] = {}

        def record(step: int, metrics: dict[str, float]) -> None:
            steps.append(Step(step, dict(metrics), int(time.time() * 1000)))

        def score(explainer: Explainer, percentage: int, step: int) -> None:
            began = time.perf_counter()
            evaluation, _ = evaluate_head(explainer, self.checkpoint_set(config.checkpoints.images), config.evaluation)
            checkpoints[percentage] = checkpoint_scores(evaluation) | {"seconds": time.perf_counter() - began}
            if rule is not None and (reason := rule.reason(percentage, checkpoints[percentage])):
                raise StopTraining(reason)

        plan = Checkpoints(config.checkpoints.percentages, score) if config.checkpoints.percentages else None
        try:
            trained = self.trainer(
                config, self.bench, on_step=on_step or record, progress=self.progress, checkpoints=plan
            )
        except StopTraining as stop:
            at = max(checkpoints)
            scores = {name: value for name, value in checkpoints[at].items() if name != "seconds"}
            metrics = scores | {
                "stopped_at_percent": float(at),
                "checkpoint_seconds": sum(c["seconds"] for c in checkpoints.values()),
            }
            return TrialResult(metrics, {}, steps, time.perf_counter() - started, checkpoints, str(stop))
        evaluation, maps = evaluate_head(trained.explainer, self.val_set, config.evaluation)
        summary = trained.summary
        metrics = evaluation.metrics() | {
            "train_seconds": summary.seconds,
            "eval_seconds": evaluation.seconds,
            "train_images_per_second": summary.images_per_second,
            "compile_seconds": summary.compile_seconds,
            "checkpoint_seconds": summary.checkpoint_seconds,
        }
        with tempfile.TemporaryDirectory() as folder:
            paths = grid_and_curve(self.val_set, maps, evaluation, trained, Path(folder), f"trial {index}")
            plots = {path.name: path.read_bytes() for path in paths}
        return TrialResult(metrics, plots, steps, time.perf_counter() - started, checkpoints)
