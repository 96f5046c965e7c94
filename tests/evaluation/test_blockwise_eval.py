"""Blockwise evaluation: a split scored block by block, maps made block by block, gets exactly the scores that the
whole split held in memory gets (the earlier in-memory path: one `road` call on the whole split with a
generator seeded at the evaluation's seed, the random maps drawn at once)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from pipeline import config as configs
from pipeline.config import EvalConfig
from pipeline.evaluation.scoring import (
    SHOWN_MAPS,
    EvalSet,
    PerImage,
    block_size,
    evaluate_head,
    evaluate_maps,
    prepare_eval_set,
    reference_maker,
    reference_maps,
)
from pipeline.metrics.adic import ad_ic
from pipeline.metrics.road import RoadProtocol, road, road_correct
from pipeline.models.classifiers import Classifier, Preprocessing
from pipeline.training.head_training import Workbench, train_head
from tests.toy_models import TinyClassifier

REPO = Path(__file__).resolve().parents[2]
SIZE = 16


def toy_classifier() -> Classifier:
    torch.manual_seed(0)
    return Classifier("toy", TinyClassifier(), Preprocessing(SIZE))


def toy_split(count: int) -> TensorDataset:
    images = 0.2 + 0.6 * torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    return TensorDataset(images, torch.zeros(count, dtype=torch.long))


def in_memory_scores(
    classifier: Classifier, evalset: EvalSet, maps: torch.Tensor, settings: EvalConfig
) -> dict[str, float]:
    """ROAD and AD/IC with the whole split and all its maps in memory at once, as evaluation worked before."""
    images = evalset.first_images(len(evalset))
    generator = torch.Generator().manual_seed(settings.seed)
    scores = road(
        classifier, images, maps, evalset.targets, RoadProtocol.of(settings), settings.batch_size, generator
    ).metrics()
    return (
        scores
        | ad_ic(
            classifier, images, maps, evalset.targets, evalset.probabilities, batch_size=settings.batch_size
        ).metrics()
    )


def test_per_image_results_written_block_by_block_equal_the_parts_joined():
    parts = [
        {"correct": torch.rand(2, 3, size) > 0.5, "masked": torch.rand(4, size, dtype=torch.float64)}
        for size in (32, 32, 7)
    ]
    results, first = PerImage(71), 0
    for part in parts:
        results.put(first, part)
        first += part["masked"].shape[-1]
    for name in ("correct", "masked"):
        joined = torch.cat([part[name] for part in parts], dim=-1)
        assert results[name].dtype == joined.dtype and torch.equal(results[name], joined)


def test_blocks_hold_whole_road_chunks_and_whole_batches():
    assert block_size(32, torch.device("cpu")) == 32
    assert block_size(5, torch.device("cpu")) == 40
    assert block_size(32, torch.device("cuda")) == 64  # an accelerator imputes 64 images together


def test_road_of_a_split_in_parts_of_whole_chunks_equals_road_of_the_whole_split():
    classifier, images = toy_classifier(), toy_split(12).tensors[0]
    maps = reference_maps("random", 12, (SIZE, SIZE), seed=3)
    with torch.no_grad():
        targets = classifier(images).argmax(1)
    protocol = RoadProtocol((20, 50, 80), noise=0.2)
    whole = road_correct(classifier, images, maps, targets, protocol, generator=torch.Generator().manual_seed(1))
    carried = torch.Generator().manual_seed(1)  # one generator for the parts, in the split's order
    parts = [
        road_correct(classifier, images[:8], maps[:8], targets[:8], protocol, generator=carried),
        road_correct(classifier, images[8:], maps[8:], targets[8:], protocol, generator=carried),
    ]
    assert torch.equal(torch.cat(parts, dim=2), whole)
    assert 0 < whole.double().mean() < 1, "the toy classifier is sensitive to the removed pixels"


@pytest.mark.parametrize("kind", ["random", "center"])
def test_a_split_scored_in_blocks_scores_exactly_as_in_memory(kind):
    classifier, settings = toy_classifier(), EvalConfig(percentages=[20, 50, 80], batch_size=4, seed=2)
    evalset = prepare_eval_set(classifier, toy_split(19), settings.batch_size)
    assert block_size(settings.batch_size, evalset.device) == 8  # three blocks: 8, 8 and 3 images
    evaluation, shown = evaluate_maps(classifier, evalset, reference_maker(kind, settings.seed), settings)
    maps = reference_maps(kind, len(evalset), evalset.size, settings.seed)
    assert evaluation.metrics() == in_memory_scores(classifier, evalset, maps, settings)
    assert evaluation.images == 19 and torch.equal(shown, maps[:SHOWN_MAPS])


@pytest.mark.system
@pytest.mark.slow
def test_blockwise_evaluation_of_the_demo_equals_the_in_memory_scores():
    """The head's maps; the reference maps (the search's objective thresholds) take the same path, tested above."""
    config = configs.load(
        REPO / "experiments" / "demo.yaml",
        # two percentages: the blocks' bookkeeping, not the protocol, is under test (a fifth of the ROAD passes)
        [
            "data.demo_train_views=16",
            "data.demo_eval_views=16",
            "evaluation.batch_size=8",
            "evaluation.percentages=[30,70]",
        ],
    )
    bench = Workbench.load(config)
    explainer = train_head(config, bench, progress=False).explainer
    classifier, settings = explainer.classifier, config.evaluation
    evalset = prepare_eval_set(classifier, bench.splits.val, settings.batch_size)
    assert len(evalset) == 16 and block_size(settings.batch_size, evalset.device) == 8  # read in two blocks
    images = evalset.first_images(len(evalset))
    with torch.no_grad():
        head_maps = torch.cat(
            [
                explainer.explain(part, classes).saliency
                for part, classes in zip(images.split(settings.batch_size), evalset.targets.split(settings.batch_size))
            ]
        )
    evaluation, shown = evaluate_head(explainer, evalset, settings)
    expected = in_memory_scores(classifier, evalset, head_maps, settings)
    assert {k: v for k, v in evaluation.metrics().items() if k != "class_coverage"} == expected
    assert torch.equal(shown, head_maps[:SHOWN_MAPS])
