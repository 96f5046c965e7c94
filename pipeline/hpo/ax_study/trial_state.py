"""A trial's state: one word per state, the one place that knows Ax's name for each."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class TrialState(StrEnum):
    """Where a trial stands; the values are Ax's `TrialStatus` names in lower case, as the console and MLflow show
    them."""

    CANDIDATE = "candidate"
    STAGED = "staged"
    RUNNING = "running"
    DISPATCHED = "dispatched"
    COMPLETED = "completed"
    EARLY_STOPPED = "early_stopped"
    FAILED = "failed"
    ABANDONED = "abandoned"

    @classmethod
    def of_ax(cls, status: Any) -> TrialState:
        """The state of an Ax `TrialStatus`."""
        return cls(status.name.lower())

    @property
    def finished(self) -> bool:
        """Whether the trial counts towards ``--trials``: it ran to its end or was stopped early on purpose."""
        return self in (TrialState.COMPLETED, TrialState.EARLY_STOPPED)
