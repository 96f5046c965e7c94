"""AD/IC against values computed by hand on a toy classifier."""

from __future__ import annotations

import pytest
import torch

from pipeline.metrics.adic import AdIcResult, ad_ic, kept_maps
from tests.toy_models import SCALE, MeanClassifier, sigmoid


def test_kept_maps_keep_the_top_values_soft() -> None:
    maps = torch.arange(16.0).view(1, 4, 4) / 15
    assert torch.equal(kept_maps(maps, 1.0), maps)
    half = kept_maps(maps, 0.5)
    assert torch.equal(half.flatten()[8:], maps.flatten()[8:]) and half.flatten()[:8].eq(0).all()
    assert kept_maps(maps, 0.15).count_nonzero() == 2  # round(0.85 * 16) = 14 values zeroed


def test_ad_ic_match_hand_computed_values() -> None:
    images = torch.ones(2, 3, 4, 4)
    maps = (torch.arange(16.0).view(1, 4, 4) / 15).expand(2, -1, -1)
    targets = torch.tensor([1, 0])  # masking darkens: class 1 loses confidence, class 0 gains it
    classifier = MeanClassifier()
    clean_probs = classifier(images).softmax(dim=1).gather(1, targets[:, None])[:, 0]
    result = ad_ic(classifier, images, maps, targets, clean_probs, batch_size=1)

    clean = sigmoid(SCALE)  # p(class 1) on the clean image (mean 1)
    masked_means = {1.0: 120 / 240, 0.5: 92 / 240, 0.15: 29 / 240}  # sum of kept map values / 16 pixels
    expected_ad = [(clean - sigmoid(SCALE * m)) / clean * 100 / 2 for m in masked_means.values()]
    assert result.keep == [1.0, 0.5, 0.15]
    assert result.ad == pytest.approx(expected_ad, rel=1e-5)
    assert result.ic == pytest.approx([50.0, 50.0, 50.0])
    assert result.metrics() == pytest.approx(
        {
            "ad_100": expected_ad[0],
            "ic_100": 50.0,
            "ad_50": expected_ad[1],
            "ic_50": 50.0,
            "ad_15": expected_ad[2],
            "ic_15": 50.0,
        },
        rel=1e-5,
    )


def test_unchanged_images_have_no_drop_or_increase() -> None:
    images = torch.rand(3, 3, 8, 8)
    targets = torch.tensor([0, 1, 1])
    classifier = MeanClassifier()
    clean_probs = classifier(images).softmax(dim=1).gather(1, targets[:, None])[:, 0]
    result = ad_ic(classifier, images, torch.ones(3, 8, 8), targets, clean_probs, keep=(1.0,))
    assert result.ad == [0.0] and result.ic == [0.0]
    assert AdIcResult([1.0], [0.0], [0.0]).metrics() == {"ad_100": 0.0, "ic_100": 0.0}
