"""Where a search's trials run: the `TrialPool` protocol and the in-process pool (one trial at a time); the Ray
pool is `pipeline.hpo.ray_pool`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pipeline.config import ExperimentConfig
from pipeline.hpo.trial_worker import TrialResult, TrialWorker, failure_reason

if TYPE_CHECKING:
    from pipeline.tracking.runs import RunLog



@dataclass
class Finished:
    """A trial that came back from a pool: its result, or why it failed."""

    index: int
    result: TrialResult | None = None
    failure: str | None = None


class TrialPool(Protocol):
    """Where the search's trials run: `InProcessPool` here, or `pipeline.hpo.ray_pool.RayPool`."""

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
