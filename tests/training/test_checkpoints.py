"""Checkpoints during training: they score the head without changing it, at the steps asked for, and can stop it."""

from __future__ import annotations

import pytest
import torch

from pipeline import config as configs
from pipeline.evaluation.scoring import evaluate_head, prepare_eval_set
from pipeline.training.checkpoints import Checkpoints, StopTraining
from pipeline.training.head_training import Workbench, train_head
from tests.toy_models import TOY_MODEL, toy_base, write_images

CONFIG = configs.from_dict(
    {
        "model": TOY_MODEL,
        "data": {"demo_train_views": 24, "demo_eval_views": 8},
        "train": {"batch_size": 4},
        "evaluation": {"percentages": [20, 50, 80]},
    }
)


def test_scoring_at_checkpoints_leaves_the_trained_head_bit_identical(tmp_path):
    # An image folder: its training views are cropped and flipped with torch's global generator as they load.
    base = toy_base(write_images(tmp_path, count=24))
    base["data"]["holdout"] = 0.05  # 21 of the 24 images train: 5 steps of 4
    config = configs.from_dict(base)
    bench = Workbench.load(config)
    plain = train_head(config, bench, progress=False)
    subset = prepare_eval_set(bench.models.classifier, bench.splits.val, limit=4)
    seen = []

    def score(explainer, percentage, step):
        seen.append((percentage, step, explainer.head.training))
        evaluate_head(explainer, subset, config.evaluation)
        torch.rand(100)  # a scorer that draws from torch's global generator must not shift training's draws

    checked = train_head(config, bench, progress=False, checkpoints=Checkpoints([50, 75], score))
    assert plain.summary.steps == checked.summary.steps == 5 and checked.summary.checkpoint_seconds > 0
    assert seen == [(50, 2, False), (75, 4, False)]  # after steps round(2.5) and round(3.75), in eval mode
    before, after = plain.explainer.head.state_dict(), checked.explainer.head.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)  # weights, BatchNorm statistics, counts


def test_a_checkpoint_can_stop_training():
    def stop(explainer, percentage, step):
        raise StopTraining(f"beaten at {percentage} %")

    with pytest.raises(StopTraining, match="beaten at 50 %"):
        train_head(CONFIG, progress=False, checkpoints=Checkpoints([50], stop))


def test_checkpoint_steps_stay_within_the_training():
    plan = Checkpoints([1, 50, 99], lambda *args: None)
    assert plan.due(6) == {1: 1, 3: 50, 6: 99}
    assert Checkpoints([50, 75], plan.score).due(3) == {2: 50}  # round(1.5) = round(2.25): the first one runs
