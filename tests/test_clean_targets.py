"""Clean predictions kept by a Workbench: reused only for the same pixels and the same classifier weights."""

from __future__ import annotations

import torch

from pipeline import config as configs
from pipeline.training.clean_targets import CleanTargets
from pipeline.training.head_training import Workbench, train_head
from tests.toy_models import TOY_MODEL, tiny_classifier


def head_weights(trained) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trained.explainer.head.parameters()])


def test_later_runs_on_a_workbench_reuse_every_prediction_and_train_the_same_head():
    config = configs.from_dict({"model": TOY_MODEL, "data": {"demo_train_views": 24}, "train": {"batch_size": 4},
                                "loss": {"lambda1": 0.4, "lambda2": 0.5}})
    bench = Workbench.load(config)
    first = train_head(config, bench, progress=False)
    other_loss = configs.from_dict(configs.to_dict(config) | {"loss": {"lambda1": 0.2, "lambda2": 0.3}})
    second = train_head(other_loss, bench, progress=False)
    assert first.summary.reused_predictions == 0
    assert second.summary.reused_predictions == second.summary.steps == 6
    alone = train_head(other_loss, Workbench.load(config), progress=False)
    assert torch.equal(head_weights(second), head_weights(alone))
    assert torch.equal(second.explainer.head.target_counts, alone.explainer.head.target_counts)


def test_other_pixels_at_the_same_batch_number_are_classified_anew():
    network, kept = tiny_classifier().eval(), CleanTargets()
    kept.begin(network)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    calls = []

    def classify(batch):
        calls.append(batch)
        return network(batch)

    first = kept.predict(0, images, classify)
    assert torch.equal(kept.predict(0, images.clone(), classify), first) and len(calls) == 1
    changed = images.clone()
    changed[2, 0, 5, 5] += 0.25
    kept.predict(0, changed, classify)
    kept.predict(1, images, classify)
    assert len(calls) == 3 and (kept.reused, kept.computed) == (1, 3)


def test_changing_the_classifier_weights_in_place_or_the_classifier_drops_everything_kept():
    network, kept = tiny_classifier().eval(), CleanTargets()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    kept.begin(network)
    kept.predict(0, images, network)
    kept.begin(network)
    kept.predict(0, images, network)
    assert (kept.reused, kept.computed) == (1, 1)
    with torch.no_grad():
        torch.nn.init.normal_(network.fc.weight)  # what the model-randomisation test does to a block
    kept.begin(network)
    kept.predict(0, images, network)
    kept.begin(tiny_classifier().eval())
    kept.predict(0, images, network)
    assert (kept.reused, kept.computed) == (1, 3)
