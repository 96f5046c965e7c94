"""Checkpoints during training: a callback at chosen percentages of the steps that scores the head without
changing it (eval mode, the random state put back), and may stop the training."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pipeline.models.explainer import Explainer

# (explainer, percentage of training done, steps done) -> None; raise `StopTraining` to stop.
CheckpointCallback = Callable[[Explainer, int, int], None]


class StopTraining(Exception):
    """A checkpoint callback's request to end the training now; the message says why."""


@dataclass(frozen=True)
class Checkpoints:
    """Call ``score`` after the step that completes each of ``percentages`` of the training."""

    percentages: Sequence[int]
    score: CheckpointCallback

    def due(self, total_steps: int) -> dict[int, int]:
        """Step -> percentage: the step after which each checkpoint runs (at least 1, at most ``total_steps``); of
        percentages that fall on one step (a short training) only the first runs."""
        return {
            min(total_steps, max(1, round(percentage * total_steps / 100))): percentage
            for percentage in reversed(self.percentages)
        }


def run_checkpoint(checkpoints: Checkpoints, explainer: Explainer, percentage: int, step: int) -> float:
    """Run one checkpoint with the head in eval mode and every random generator of torch (CPU and the head's CUDA
    device) restored afterwards, so training continues exactly as without it; returns its seconds."""
    head = explainer.head
    device = next(head.parameters()).device
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        head.eval()
        try:
            checkpoints.score(explainer, percentage, step)
        finally:
            head.train()
    return time.perf_counter() - started
