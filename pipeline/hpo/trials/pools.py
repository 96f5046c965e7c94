"""Where a search's trials run: the `TrialPool` protocol and the in-process pool (one trial at a time); the Ray
pool is `pipeline.hpo.trials.ray_pool`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from pipeline.config import ExperimentConfig
from pipeline.hpo.ax_study.early_stopping import StoppingRule
from pipeline.hpo.trials.trial_worker import TrialResult, TrialWorker, failure_reason


class StepLog(Protocol):
    """Where a running trial's training steps go: its MLflow run (`pipeline.tracking.runs.RunLog`)."""

    run_id: str

    def log_step(self, step: int, metrics: Mapping[str, float], timestamp_ms: int | None = None) -> None:
        """Record one step's metrics."""


@dataclass
class Finished:
    """A trial that came back from a pool: its result, or why it failed."""

    index: int
    result: TrialResult | None = None
    failure: str | None = None


class TrialPool(Protocol):
    """Where the search's trials run: `InProcessPool` here, or `pipeline.hpo.trials.ray_pool.RayPool`."""

    def free_slots(self) -> int:
        """How many more trials can start now."""

    def submit(
        self, index: int, config: ExperimentConfig, steps: StepLog | None, rule: StoppingRule | None = None
    ) -> dict[str, str]:
        """Start trial ``index``, its steps logged to ``steps`` where the pool can (else they come back in its
        result), stopped at a checkpoint where ``rule`` says so; returns where it runs (host, pid, device, ...)."""

    def wait(self) -> list[Finished]:
        """Block until at least one trial has finished (or a slot got ready) and return the finished ones."""

    def close(self) -> None:
        """Stop the workers."""


class InProcessPool:
    """One trial at a time in the search process, its steps logged live."""

    def __init__(self, worker: TrialWorker) -> None:
        self.worker = worker
        self._job: tuple[int, ExperimentConfig, StepLog | None, StoppingRule | None] | None = None

    def free_slots(self) -> int:
        return 0 if self._job else 1

    def submit(
        self, index: int, config: ExperimentConfig, steps: StepLog | None, rule: StoppingRule | None = None
    ) -> dict[str, str]:
        self._job = (index, config, steps, rule)
        return self.worker.where

    def wait(self) -> list[Finished]:
        assert self._job is not None  # the trial loop waits only while a trial runs
        (index, config, steps, rule), self._job = self._job, None
        on_step = steps.log_step if steps is not None else None
        try:
            return [Finished(index, result=self.worker.run(index, config, on_step=on_step, rule=rule))]
        except Exception as error:  # a failing trial must not end the search
            return [Finished(index, failure=failure_reason(error))]

    def close(self) -> None:
        self._job = None
