"""ROAD means something on real data: random maps score MoRF ≈ LeRF, an occlusion map scores MoRF << LeRF."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import EvalConfig
from pipeline.data.sources import DemoViews
from pipeline.evaluation.scoring import EvalSet, prepare_eval_set, reference_maps
from pipeline.metrics.road import RoadProtocol, RoadResult, road
from pipeline.models.classifiers import load_classifier

# A 3 x 3 grid of half-image patches: 9 passes over the views. (On 18 views, a 7 x 7 grid of quarter-image patches,
# 49 passes, separated MoRF from LeRF by 0.40; this one by 0.42. 12 views keep the margins of both assertions wide.)
VIEWS, PATCH, STRIDE = 12, 112, 56


@torch.no_grad()
def occlusion_maps(classifier, evalset: EvalSet) -> torch.Tensor:
    """Brute force: the drop of the target's probability when a grey patch hides each place."""
    images, targets = evalset.first_images(len(evalset)), evalset.targets
    size = images.shape[-1]
    starts = range(0, size - PATCH + 1, STRIDE)
    maps = torch.zeros(len(images), len(starts), len(starts))
    clean = evalset.probabilities  # of the classifier's own prediction, the target
    for i, top in enumerate(starts):
        for j, left in enumerate(starts):
            hidden = images.clone()
            hidden[:, :, top : top + PATCH, left : left + PATCH] = 0.5
            probability = classifier(hidden).softmax(1).gather(1, targets[:, None])[:, 0]
            maps[:, i, j] = clean - probability
    return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def road_score(classifier, evalset: EvalSet, maps: torch.Tensor, settings: EvalConfig) -> RoadResult:
    """ROAD of ``maps`` as a search scores them (`evaluate_maps` makes this call), without the AD/IC it adds."""
    generator = torch.Generator(device=evalset.device).manual_seed(settings.seed)
    return road(
        classifier,
        evalset.first_images(len(evalset)),
        maps,
        evalset.targets,
        RoadProtocol.of(settings),
        settings.batch_size,
        generator,
    )


@pytest.mark.system
@pytest.mark.slow
def test_random_maps_tie_and_an_occlusion_map_separates_morf_from_lerf():
    # channels_last: the same logits to 1e-4, in two thirds of the time on a CPU (measured on 2 cores).
    classifier = load_classifier("efficientnet_lite0").to(memory_format=torch.channels_last)
    evalset = prepare_eval_set(classifier, DemoViews(224, VIEWS, seed=1, random=False))
    settings = EvalConfig(percentages=[20, 50, 80])  # random maps 0.617 / 0.612, occlusion 0.325 / 0.633 (measured)
    random = road_score(classifier, evalset, reference_maps("random", VIEWS, (224, 224)), settings)
    occlusion = road_score(classifier, evalset, occlusion_maps(classifier, evalset), settings)
    print(
        f"random maps: MoRF {random.morf_auc:.3f} LeRF {random.lerf_auc:.3f}; "
        f"occlusion maps: MoRF {occlusion.morf_auc:.3f} LeRF {occlusion.lerf_auc:.3f}"
    )
    assert abs(random.morf_auc - random.lerf_auc) < 0.08
    assert occlusion.lerf_auc - occlusion.morf_auc > 0.15
