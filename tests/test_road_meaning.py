"""ROAD means something on real data: random maps score MoRF ≈ LeRF, an occlusion map scores MoRF << LeRF."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import EvalConfig
from pipeline.data.sources import DemoViews
from pipeline.evaluation.scoring import evaluate_maps, prepare_eval_set, reference_maps
from pipeline.models.classifiers import load_classifier

VIEWS, PATCH, STRIDE = 18, 56, 28


@torch.no_grad()
def occlusion_maps(classifier, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Brute force: the drop of the target's probability when a grey patch hides each place."""
    size = images.shape[-1]
    starts = range(0, size - PATCH + 1, STRIDE)
    maps = torch.zeros(len(images), len(starts), len(starts))
    clean = classifier(images).softmax(1).gather(1, targets[:, None])[:, 0]
    for i, top in enumerate(starts):
        for j, left in enumerate(starts):
            hidden = images.clone()
            hidden[:, :, top:top + PATCH, left:left + PATCH] = 0.5
            probability = classifier(hidden).softmax(1).gather(1, targets[:, None])[:, 0]
            maps[:, i, j] = clean - probability
    return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.slow
def test_random_maps_tie_and_an_occlusion_map_separates_morf_from_lerf():
    classifier = load_classifier("efficientnet_lite0")
    evalset = prepare_eval_set(classifier, DemoViews(224, VIEWS, seed=1, random=False))
    settings = EvalConfig()
    random = evaluate_maps(classifier, evalset, reference_maps("random", VIEWS, (224, 224)), settings).road
    occlusion = evaluate_maps(classifier, evalset, occlusion_maps(classifier, evalset.images, evalset.targets),
                              settings).road
    print(f"random maps: MoRF {random.morf_auc:.3f} LeRF {random.lerf_auc:.3f}; "
          f"occlusion maps: MoRF {occlusion.morf_auc:.3f} LeRF {occlusion.lerf_auc:.3f}")
    assert abs(random.morf_auc - random.lerf_auc) < 0.08
    assert occlusion.lerf_auc - occlusion.morf_auc > 0.15
