"""The trial loop on a fake study and a fake pool: no Ax, no MLflow, no training."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline import config as configs
from pipeline.errors import UserError
from pipeline.hpo.ax_study.records import TrialRecord
from pipeline.hpo.ax_study.study import INTERRUPTED, AwaitingData
from pipeline.hpo.ax_study.trial_state import TrialState
from pipeline.hpo.trials.loop import TrialListener, TrialLoop
from pipeline.hpo.trials.pools import Finished
from pipeline.hpo.trials.trial_worker import TrialResult


class FakeStudy:
    """Hands out points 0, 1, 2, ...; `awaiting` indices raise AwaitingData once while trials run."""

    def __init__(self, awaiting: set[int] = frozenset()) -> None:
        self.trials: dict[int, dict[str, Any]] = {}
        self.awaiting = set(awaiting)
        self.space = SimpleNamespace(objective_signs={"road_morf_auc": -1.0, "road_lerf_auc": 1.0})

    def next_trial(self) -> tuple[int, dict[str, Any]]:
        index = len(self.trials)
        running = any(trial["status"] == TrialState.RUNNING for trial in self.trials.values())
        if index in self.awaiting and running:
            self.awaiting.discard(index)
            raise AwaitingData("wait")
        self.trials[index] = {
            "status": TrialState.RUNNING,
            "metrics": {},
            "reason": None,
            "parameters": {"x": index / 10},
        }
        return index, dict(self.trials[index]["parameters"])

    def complete(self, index: int, metrics: dict[str, float], checkpoints: dict) -> bool:
        self.trials[index].update(status=TrialState.COMPLETED, metrics=dict(metrics))
        return True

    def stop_early(self, index: int, metrics: dict[str, float], checkpoints: dict, reason: str) -> bool:
        self.trials[index].update(status=TrialState.EARLY_STOPPED, metrics=dict(metrics), reason=reason)
        return True

    def fail(self, index: int, reason: str) -> None:
        self.trials[index].update(status=TrialState.FAILED, reason=reason)

    def records(self) -> list[TrialRecord]:
        return [
            TrialRecord(index, t["status"], t["parameters"], t["metrics"], t["reason"], "fake")
            for index, t in sorted(self.trials.items())
        ]

    @property
    def finished_count(self) -> int:
        return sum(t["status"] in (TrialState.COMPLETED, TrialState.EARLY_STOPPED) for t in self.trials.values())


@dataclass
class FakePool:
    """``slots`` trials at once; each `wait` finishes the oldest running trial, failing those in ``failing``."""

    slots: int = 1
    failing: set[int] = field(default_factory=set)
    stopping: set[int] = field(default_factory=set)
    interrupt_at_wait: int | None = None
    running: list[int] = field(default_factory=list)
    submitted: list[tuple[int, Any]] = field(default_factory=list)
    rules: dict[int, Any] = field(default_factory=dict)
    waits: int = 0
    closed: bool = False

    def free_slots(self) -> int:
        return self.slots - len(self.running)

    def submit(self, index: int, config: Any, steps: Any, rule: Any = None) -> dict[str, str]:
        self.running.append(index)
        self.submitted.append((index, steps))
        self.rules[index] = rule
        return {"host": "fake", "slot": str(len(self.running) - 1)}

    def wait(self) -> list[Finished]:
        self.waits += 1
        if self.waits == self.interrupt_at_wait:
            raise KeyboardInterrupt
        index = self.running.pop(0)
        if index in self.failing:
            return [Finished(index, failure=f"TrainingDiverged: trial {index}")]
        if index in self.stopping:
            return [
                Finished(
                    index,
                    result=TrialResult(
                        {"road_morf_auc": 0.6, "road_lerf_auc": 0.3}, {}, checkpoints={50: {}}, stopped="beaten"
                    ),
                )
            ]
        return [Finished(index, result=TrialResult({"road_morf_auc": 0.3, "road_lerf_auc": 0.6}, {}))]

    def close(self) -> None:
        self.closed = True


class Events(TrialListener):
    """Writes down every call, and gives a step log named after the trial."""

    def __init__(self, failing_start: set[int] = frozenset()) -> None:
        self.calls: list[tuple[str, int]] = []
        self.failing_start = failing_start

    def started(self, index: int, parameters: dict[str, Any], config: Any) -> str:
        self.calls.append(("started", index))
        if index in self.failing_start:
            raise RuntimeError("no MLflow run")
        return f"steps-{index}"

    def placed(self, index: int, where: dict[str, str]) -> None:
        self.calls.append(("placed", index))

    def result(self, index: int, result: TrialResult) -> None:
        self.calls.append(("result", index))

    def settled(self, record: TrialRecord, seconds: float) -> None:
        self.calls.append((f"settled:{record.status}", record.index))

    def interrupted(self, index: int) -> None:
        self.calls.append(("interrupted", index))


def loop(
    study: FakeStudy, pool: FakePool, listeners: list[TrialListener], target: int, early_stop: bool = False
) -> TrialLoop:
    config = configs.from_dict({"checkpoints": {"early_stop": early_stop}})
    return TrialLoop(study, pool, lambda parameters: config, listeners, target, max_failures_in_row=3)


def test_failed_trials_are_replaced_and_every_step_is_told_in_order() -> None:
    study, pool, events = FakeStudy(), FakePool(failing={1}), Events()
    loop(study, pool, [events], target=3).run()
    assert [record.status for record in study.records()] == [
        TrialState.COMPLETED,
        TrialState.FAILED,
        TrialState.COMPLETED,
        TrialState.COMPLETED,
    ]
    assert study.records()[1].reason == "TrainingDiverged: trial 1"
    assert events.calls[:7] == [
        ("started", 0),
        ("placed", 0),
        ("result", 0),
        ("settled:completed", 0),
        ("started", 1),
        ("placed", 1),
        ("settled:failed", 1),
    ]
    assert pool.submitted[0] == (0, "steps-0") and pool.closed  # the listener's step log went to the pool


def test_a_listener_that_cannot_start_a_trial_fails_it_and_the_search_goes_on() -> None:
    study, pool, events = FakeStudy(), FakePool(), Events(failing_start={0})
    loop(study, pool, [events], target=2).run()
    assert [record.status for record in study.records()] == [
        TrialState.FAILED,
        TrialState.COMPLETED,
        TrialState.COMPLETED,
    ]
    assert study.records()[0].reason == "RuntimeError: no MLflow run"
    assert ("placed", 0) not in events.calls and [index for index, _ in pool.submitted] == [1, 2]


def test_three_failures_in_a_row_stop_the_search_in_one_line() -> None:
    study, pool = FakeStudy(), FakePool(failing={1, 2, 3})
    with pytest.raises(UserError) as error:
        loop(study, pool, [Events()], target=5).run()
    assert str(error.value).splitlines() == [
        "3 trials failed in a row (last: TrainingDiverged: trial 3); fix the cause and rerun the same command to resume"
    ]
    assert study.finished_count == 1 and pool.closed


def test_parallel_slots_fill_up_and_never_overshoot_the_target() -> None:
    study, pool = FakeStudy(), FakePool(slots=2)
    loop(study, pool, [Events()], target=3).run()
    assert study.finished_count == 3 and len(study.trials) == 3  # the last slot stays empty: 2 done + 1 running = 3
    assert pool.waits == 3


def test_awaiting_data_waits_for_a_running_trial_instead_of_failing() -> None:
    study, pool = FakeStudy(awaiting={1}), FakePool(slots=2)
    loop(study, pool, [Events()], target=3).run()
    assert [record.status for record in study.records()] == [TrialState.COMPLETED] * 3


def test_an_interrupt_marks_the_trials_in_flight_interrupted_and_tells_the_listeners() -> None:
    study, pool, events = FakeStudy(), FakePool(slots=2, interrupt_at_wait=2), Events()
    with pytest.raises(KeyboardInterrupt):
        loop(study, pool, [events], target=5).run()
    records = study.records()
    assert [r.status for r in records] == [TrialState.COMPLETED, TrialState.FAILED, TrialState.FAILED]
    assert {r.reason for r in records[1:]} == {INTERRUPTED}
    assert ("interrupted", 1) in events.calls and ("interrupted", 2) in events.calls and pool.closed


def test_stopped_trials_count_towards_the_target_and_are_no_failures() -> None:
    study, pool, events = FakeStudy(), FakePool(stopping={1, 2, 3}), Events()
    loop(study, pool, [events], target=5, early_stop=True).run()
    statuses = [record.status for record in study.records()]
    assert statuses == [TrialState.COMPLETED, *[TrialState.EARLY_STOPPED] * 3, TrialState.COMPLETED]
    assert study.records()[1].reason == "beaten" and ("settled:early_stopped", 3) in events.calls


def test_each_trial_gets_a_stopping_rule_against_the_trials_completed_when_it_starts_only_with_early_stop() -> None:
    study, pool = FakeStudy(), FakePool(slots=2)
    loop(study, pool, [Events()], target=4, early_stop=True).run()
    assert [rule.rivals for rule in pool.rules.values()][:2] == [(), ()]  # 0 and 1 started together
    assert [record.index for record in pool.rules[2].rivals] == [0]
    plain_pool = FakePool()
    loop(FakeStudy(), plain_pool, [Events()], target=2).run()
    assert set(plain_pool.rules.values()) == {None}
