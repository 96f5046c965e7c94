"""One search trial's work: train a head, score it on the validation split, draw its plots.

The same `TrialWorker` runs in the search process (``--parallel 1``, `InProcessPool`) and inside each
Ray worker (`pipeline.parallel`). It never talks to Ax; its only MLflow contact is the optional
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
from typing import TYPE_CHECKING, Callable, Protocol

import torch

from pipeline.config import ExperimentConfig
from pipeline.evaluate import EvalSet, Evaluation, evaluate_head, prepare_eval_set
from pipeline.plots import explanation_grid, road_curve
from pipeline.train import TrainedHead, Workbench, train_head
from pipeline.training.loop import StepCallback

if TYPE_CHECKING:
    from pipeline.tracking import RunLog

GRID_IMAGES = 8
Trainer = Callable[..., TrainedHead]


def grid_and_curve(evalset: EvalSet, maps: torch.Tensor, evaluation: Evaluation, trained: TrainedHead,
                   directory: Path, title: str) -> list[Path]:
    """Explanation grid of the first validation images and the ROAD curve, as PNGs."""
    classifier = trained.explainer.classifier
    count = min(GRID_IMAGES, len(evalset))
    titles = [f"{classifier.category(int(t))} ({float(p):.2f})"
              for t, p in zip(evalset.targets[:count], evalset.probabilities[:count])]
    grid = explanation_grid(evalset.images[:count].cpu(), maps[:count].cpu(), titles, directory / "explanations.png")
    road = evaluation.road
    curve = road_curve(road.percentages, road.morf, road.lerf, road.morf_auc, road.lerf_auc,
                       directory / "road_curve.png", title=f"{title}\n{road.protocol}")
    return [grid, curve]


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


@dataclass
class Finished:
    """A trial that came back from a pool: its result, or why it failed."""

    index: int
    result: TrialResult | None = None
    failure: str | None = None


class TrialPool(Protocol):
    """Where the search's trials run: `InProcessPool` here, or `pipeline.parallel.RayPool`."""

    def free_slots(self) -> int:
        """How many more trials can start now."""

    def submit(self, index: int, config: ExperimentConfig, run: RunLog) -> dict[str, str]:
        """Start trial ``index`` (its MLflow run is ``run``); returns where it runs (host, pid, device, ...)."""

    def wait(self) -> list[Finished]:
        """Block until at least one trial has finished (or a slot got ready) and return the finished ones."""

    def close(self) -> None:
        """Stop the workers."""


class InProcessPool:
    """One trial at a time in the search process, its steps logged live to the trial's run."""

    def __init__(self, worker: TrialWorker) -> None:
        self.worker = worker
        self._job: tuple[int, ExperimentConfig, RunLog] | None = None

    def free_slots(self) -> int:
        return 0 if self._job else 1

    def submit(self, index: int, config: ExperimentConfig, run: RunLog) -> dict[str, str]:
        self._job = (index, config, run)
        return self.worker.where

    def wait(self) -> list[Finished]:
        (index, config, run), self._job = self._job, None
        try:
            return [Finished(index, result=self.worker.run(index, config, on_step=run.log_step))]
        except Exception as error:  # a failing trial must not end the search
            return [Finished(index, failure=failure_reason(error))]

    def close(self) -> None:
        self._job = None
