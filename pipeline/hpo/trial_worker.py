"""One search trial's work: train a head, score it on the validation split, draw its plots.

The same `TrialWorker` runs in the search process (``--parallel 1``, `InProcessPool`) and inside each
Ray worker (`pipeline.hpo.ray_pool`). It never talks to Ax; its only MLflow contact is the optional
``on_step`` callback. What a trial produced comes back as a plain, picklable `TrialResult`, and the
search process records it (Ax, MLflow, the trial folder).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.config import ExperimentConfig
from pipeline.evaluation.scoring import EvalSet, evaluate_head, prepare_eval_set
from pipeline.reports.figures import grid_and_curve
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
    (empty when they were logged live) and the seconds the work took."""

    metrics: dict[str, float]
    plots: dict[str, bytes]
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0


class TrialWorker:
    """Runs trials in one process on models, data and a validation set loaded once."""

    def __init__(self, bench: Workbench, val_set: EvalSet, trainer: Trainer = train_head,
                 progress: bool = False) -> None:
        self.bench = bench
        self.val_set = val_set
        self.trainer = trainer
        self.progress = progress
        self.where = {"host": socket.gethostname(), "pid": str(os.getpid()), "device": str(bench.models.device)}
        if os.environ.get("CUDA_VISIBLE_DEVICES"):
            self.where["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]

    @classmethod
    def load(cls, base: ExperimentConfig, trainer: Trainer = train_head, progress: bool = False) -> TrialWorker:
        """Load the frozen models, the data and the classified validation split of ``base``."""
        bench = Workbench.load(base)
        val_set = prepare_eval_set(bench.models.classifier, bench.splits.val, base.evaluation.batch_size)
        return cls(bench, val_set, trainer, progress)

    def run(self, index: int, config: ExperimentConfig, on_step: StepCallback | None = None) -> TrialResult:
        """Train and evaluate trial ``index``; steps go to ``on_step`` when given, else into the result."""
        started = time.perf_counter()
        steps: list[Step] = []

        def record(step: int, metrics: dict[str, float]) -> None:
            steps.append(Step(step, dict(metrics), int(time.time() * 1000)))

        trained = self.trainer(config, self.bench, on_step=on_step or record, progress=self.progress)
        evaluation, maps = evaluate_head(trained.explainer, self.val_set, config.evaluation)
        summary = trained.summary
        metrics = evaluation.metrics() | {"train_seconds": summary.seconds, "eval_seconds": evaluation.seconds,
                                          "train_images_per_second": summary.images_per_second,
                                          "compile_seconds": summary.compile_seconds}
        with tempfile.TemporaryDirectory() as folder:
            paths = grid_and_curve(self.val_set, maps, evaluation, trained, Path(folder), f"trial {index}")
            plots = {path.name: path.read_bytes() for path in paths}
        return TrialResult(metrics, plots, steps, time.perf_counter() - started)


