"""Frozen outputs kept by a Workbench: reused only for the same pixels and the same network weights."""

from __future__ import annotations

import torch
from torch import nn

from pipeline import config as configs
from pipeline.training.frozen_outputs import FrozenOutputs
from pipeline.training.head_training import Workbench, train_head
from tests.toy_models import TOY_MODEL, tiny_classifier, tiny_features


class TinyAuxiliary(nn.Module):
    """Tiny features as an auxiliary network returns them: a list of maps."""

    def __init__(self) -> None:
        super().__init__()
        self.network = tiny_features().eval()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.network(images)]


def tiny_auxiliary() -> TinyAuxiliary:
    return TinyAuxiliary()


def head_weights(trained) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trained.explainer.head.parameters()])


def test_later_runs_on_a_workbench_reuse_every_output_and_train_the_same_head():
    config = configs.from_dict(
        {
            "model": TOY_MODEL,
            "data": {"demo_train_views": 24},
            "train": {"batch_size": 4},
            "loss": {"lambda1": 0.4, "lambda2": 0.5},
        }
    )
    bench = Workbench.load(config)
    first = train_head(config, bench, progress=False)
    other_loss = configs.from_dict(configs.to_dict(config) | {"loss": {"lambda1": 0.2, "lambda2": 0.3}})
    second = train_head(other_loss, bench, progress=False)
    assert (first.summary.reused_predictions, first.summary.reused_features) == (0, 0)
    assert second.summary.reused_predictions == second.summary.reused_features == second.summary.steps == 6
    alone = train_head(other_loss, Workbench.load(config), progress=False)
    assert torch.equal(head_weights(second), head_weights(alone))
    assert torch.equal(second.explainer.head.target_counts, alone.explainer.head.target_counts)


class Counting:
    """A network whose calls are counted."""

    def __init__(self, network):
        self.network, self.calls = network, 0

    def __call__(self, images):
        self.calls += 1
        return self.network(images)


def test_other_pixels_at_the_same_batch_number_are_computed_anew():
    classifier, auxiliary, kept = tiny_classifier().eval(), tiny_auxiliary(), FrozenOutputs()
    kept.begin(classifier, auxiliary)
    classify, extract = Counting(classifier), Counting(auxiliary)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets, features = kept.outputs(0, images, classify, extract)
    again, kept_features = kept.outputs(0, images.clone(), classify, extract)
    assert torch.equal(again, targets) and kept_features is features
    assert (classify.calls, extract.calls) == (1, 1)
    changed = images.clone()
    changed[2, 0, 5, 5] += 0.25
    kept.outputs(0, changed, classify, extract)
    kept.outputs(1, images, classify, extract)
    assert (classify.calls, extract.calls) == (3, 3)
    assert (kept.reused, kept.computed, kept.reused_features) == (1, 3, 1)


def test_features_beyond_the_byte_budget_are_computed_every_time_and_predictions_still_kept():
    classifier, auxiliary = tiny_classifier().eval(), tiny_auxiliary()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    one_batch = sum(f.numel() * f.element_size() for f in auxiliary(images))
    kept = FrozenOutputs(feature_bytes=one_batch)
    kept.begin(classifier, auxiliary)
    classify, extract = Counting(classifier), Counting(auxiliary)
    for _ in range(2):
        for batch in range(2):
            kept.outputs(batch, images + batch, classify, extract)
    assert classify.calls == 2  # both predictions kept
    assert extract.calls == 3  # batch 0's features kept, batch 1's over the budget
    assert kept.reused_features == 1


def test_changing_a_network_in_place_or_another_network_drops_everything_kept():
    classifier, auxiliary, kept = tiny_classifier().eval(), tiny_auxiliary(), FrozenOutputs()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    classify, extract = Counting(classifier), Counting(auxiliary)
    for _ in range(2):
        kept.begin(classifier, auxiliary)
        kept.outputs(0, images, classify, extract)
    assert (kept.reused, kept.computed) == (1, 1)
    with torch.no_grad():
        torch.nn.init.normal_(classifier.fc.weight)  # what the model-randomisation test does to a block
    kept.begin(classifier, auxiliary)
    kept.outputs(0, images, classify, extract)
    kept.begin(classifier, tiny_auxiliary())
    kept.outputs(0, images, classify, extract)
    assert (kept.reused, kept.computed) == (1, 3)
    assert extract.calls == 3
