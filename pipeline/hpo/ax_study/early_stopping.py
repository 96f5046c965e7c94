"""Stopping search trials that are already beaten, and replaying that rule on a finished search.

At a checkpoint (a percentage of its training) a trial is *beaten* by a completed trial when that trial scored
better at the same checkpoint on every objective by more than the noise: ``sqrt(se_a² + se_b²)``, the standard error
of the difference of two independent scores (each ``se`` from `pipeline.metrics.road_noise`). Both scores use the
same images and imputation noise, so their difference varies less than that; the margin errs towards going on.
A trial stops when at least ``dominating`` completed trials beat it ("enough", ``checkpoints.dominating``) and its
checkpoint scores are not on the current front (no completed trial's final scores dominate them). Sobol trials
(the initial design) never stop. Ax's own early stopping is single-objective, hence this rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline.config import CheckpointConfig
from pipeline.hpo.ax_study.records import TrialRecord, dominates
from pipeline.hpo.ax_study.trial_state import TrialState

INITIAL_DESIGN = "Sobol"  # `TrialRecord.generator` of the initial trials, never stopped


def noise_key(objective: str) -> str:
    """The checkpoint score holding ``objective``'s standard error: ``road_morf_auc_se``."""
    return f"{objective}_se"


@dataclass(frozen=True)
class StoppingRule:
    """The rule for one running trial, fixed when it starts: the completed trials it is measured against."""

    signs: Mapping[str, float]  # objective -> +1 (maximise) or -1 (minimise)
    dominating: int
    rivals: tuple[TrialRecord, ...]

    def reason(self, percentage: int, scores: Mapping[str, float]) -> str | None:
        """Why the trial stops at this checkpoint with these scores, or None when it goes on."""
        if not all(name in scores and noise_key(name) in scores for name in self.signs):
            return None
        beaten_by = [rival.index for rival in self.rivals if self._beats(rival.checkpoints.get(percentage), scores)]
        if len(beaten_by) < self.dominating or self._on_front(scores):
            return None
        return (
            f"at {percentage} % of training, {len(beaten_by)} completed trials ({', '.join(map(str, beaten_by))}) "
            f"scored better on {' and '.join(self.signs)} by more than the noise"
        )

    def _beats(self, rival: Mapping[str, float] | None, scores: Mapping[str, float]) -> bool:
        if rival is None or not all(name in rival and noise_key(name) in rival for name in self.signs):
            return False
        return all(
            sign * (rival[name] - scores[name]) > math.hypot(rival[noise_key(name)], scores[noise_key(name)])
            for name, sign in self.signs.items()
        )

    def _on_front(self, scores: Mapping[str, float]) -> bool:
        mine = [sign * scores[name] for name, sign in self.signs.items()]
        finals = [[sign * rival.metrics[name] for name, sign in self.signs.items()] for rival in self.rivals]
        return not any(dominates(final, mine) for final in finals)


def stopping_rule(
    records: Sequence[TrialRecord], index: int, signs: Mapping[str, float], checkpoints: CheckpointConfig
) -> StoppingRule | None:
    """The rule for trial ``index`` against the completed trials now; None when early stopping is off or the trial
    belongs to the initial design."""
    if not checkpoints.early_stop or records[index].generator == INITIAL_DESIGN:
        return None
    rivals = tuple(record for record in records if record.status is TrialState.COMPLETED)
    return StoppingRule(dict(signs), checkpoints.dominating, rivals)


def replay(records: Sequence[TrialRecord], signs: Mapping[str, float], dominating: int) -> dict[int, int]:
    """Trial -> the checkpoint percentage where the rule would have stopped it, for a search run without stopping.

    Trials are taken in index order, as one at a time: each is measured against the earlier completed trials
    the replay did not stop. (A real search would then have asked Ax with other data, so later points differ.)"""
    kept: list[TrialRecord] = []
    stopped: dict[int, int] = {}
    for record in records:
        if record.status is not TrialState.COMPLETED:
            continue
        if record.generator != INITIAL_DESIGN:
            rule = StoppingRule(signs, dominating, tuple(kept))
            stop = next(
                (
                    percentage
                    for percentage, scores in sorted(record.checkpoints.items())
                    if rule.reason(percentage, scores)
                ),
                None,
            )
            if stop is not None:
                stopped[record.index] = stop
                continue
        kept.append(record)
    return stopped
