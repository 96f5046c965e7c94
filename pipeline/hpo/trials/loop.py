"""The trial loop: ask the study for points, run them on a pool, tell the study what came back, and report every
step to listeners (the MLflow recorder, the console). It knows nothing of MLflow, Ray or training, so it is tested
with a fake pool and study."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.config import ExperimentConfig
from pipeline.errors import UserError
from pipeline.hpo.ax_study.early_stopping import stopping_rule
from pipeline.hpo.ax_study.records import TrialRecord
from pipeline.hpo.ax_study.study import INTERRUPTED, AwaitingData, Study
from pipeline.hpo.ax_study.trial_state import TrialState
from pipeline.hpo.trials.pools import Finished, StepLog, TrialPool
from pipeline.hpo.trials.trial_worker import TrialResult, failure_reason


class TrialListener:
    """What the loop tells about each trial, in order: started, placed, result (trials that produced one),
    settled; or interrupted. A listener that raises in `started` or `result` fails that trial; the search goes on.
    Subclasses override what they need."""

    def started(self, index: int, parameters: dict[str, Any], config: ExperimentConfig) -> StepLog | None:
        """Trial ``index`` was asked for; may return where its training steps go."""
        return None

    def placed(self, index: int, where: dict[str, str]) -> None:
        """The pool started it here (host, pid, device, slot)."""

    def result(self, index: int, result: TrialResult) -> None:
        """It finished its work; called before the study records its objectives."""

    def settled(self, record: TrialRecord, seconds: float) -> None:
        """The study recorded it as completed, early-stopped or failed."""

    def interrupted(self, index: int) -> None:
        """The search stopped while it ran; the study has marked it interrupted."""


class TrialLoop:
    """Run trials until ``target`` have finished (completed or stopped early), up to the pool's slots at once, each
    started as soon as a slot frees up, with its early-stopping rule (`stopping_rule`) when the config asks for one.
    Failed trials are recorded and replaced; ``max_failures_in_row`` failures in a row stop the search."""

    def __init__(
        self,
        study: Study,
        pool: TrialPool,
        make_config: Callable[[dict[str, Any]], ExperimentConfig],
        listeners: Sequence[TrialListener],
        target: int,
        max_failures_in_row: int = 3,
    ) -> None:
        self.study = study
        self.pool = pool
        self.make_config = make_config
        self.listeners = list(listeners)
        self.target = target
        self.max_failures_in_row = max_failures_in_row
        self._failures_in_row = 0
        self._running: dict[int, float] = {}  # trial index -> start time

    def run(self) -> None:
        try:
            while self.study.finished_count < self.target:
                self._start_trials()
                for done in self.pool.wait():
                    self._settle(done, self._running.pop(done.index))
        except BaseException:
            self._abandon()
            raise
        finally:
            self.pool.close()

    def _start_trials(self) -> None:
        """Ask the study for a point per free slot (the running trials are its pending points) and start them,
        never more than the finished trials still missing."""
        while self.pool.free_slots() and self.study.finished_count + len(self._running) < self.target:
            try:
                index, parameters = self.study.next_trial()
            except AwaitingData:  # initial budget spent, too few completed: wait for a running trial
                return
            started = time.perf_counter()
            try:
                config = self.make_config(parameters)
                rule = stopping_rule(self.study.records(), index, self.study.space.objective_signs, config.checkpoints)
                logs = [listener.started(index, parameters, config) for listener in self.listeners]
            except Exception as error:  # a failing trial must not end the search
                self._settle(Finished(index, failure=failure_reason(error)), started)
                continue
            where = self.pool.submit(index, config, next((log for log in logs if log is not None), None), rule)
            self._running[index] = started
            for listener in self.listeners:
                listener.placed(index, where)

    def _settle(self, done: Finished, started: float) -> None:
        """Record a trial that came back; stop after too many failures in a row."""
        failure, result = done.failure, done.result
        if result is not None:
            try:
                for listener in self.listeners:
                    listener.result(done.index, result)
                if result.stopped is not None:  # a non-finite objective fails the trial in either case
                    self.study.stop_early(done.index, result.metrics, result.checkpoints, result.stopped)
                else:
                    self.study.complete(done.index, result.metrics, result.checkpoints)
            except Exception as error:
                failure = failure_reason(error)
        record = self.study.records()[done.index]
        if failure is not None and record.status is TrialState.RUNNING:
            self.study.fail(done.index, failure)
            record = self.study.records()[done.index]
        for listener in self.listeners:
            listener.settled(record, time.perf_counter() - started)
        self._failures_in_row = 0 if record.status.finished else self._failures_in_row + 1
        if self._failures_in_row >= self.max_failures_in_row:
            raise UserError(
                f"{self._failures_in_row} trials failed in a row (last: {record.reason}); fix the "
                "cause and rerun the same command to resume"
            )

    def _abandon(self) -> None:
        """The search stops with trials in flight: record them as interrupted now, as a resume would. Best effort,
        so that the error that stopped the search is the one reported."""
        for index in self._running:
            with contextlib.suppress(Exception):
                self.study.fail(index, INTERRUPTED)
                for listener in self.listeners:
                    listener.interrupted(index)
