"""The standard error bound of a ROAD AUC against the exact standard error of per-image AUCs."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.metrics.road import road_auc
from pipeline.metrics.road_noise import auc_standard_error, trapezoid_weights

PERCENTAGES = [10, 20, 30, 40, 50, 70, 90]


def test_the_weights_are_those_of_road_auc():
    assert sum(trapezoid_weights(PERCENTAGES)) == pytest.approx(0.9)
    assert trapezoid_weights([10, 30, 50, 70]) == pytest.approx([0.15, 0.2, 0.2, 0.25])  # the paper's AUC


def test_the_bound_holds_for_images_whose_hits_fall_with_the_removed_share():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        images = 48
        survives = torch.rand(images, generator=generator) * 100  # an image is recognised below its own threshold
        noise = torch.rand(images, len(PERCENTAGES), generator=generator) < 0.1  # and sometimes flips
        hits = ((survives[:, None] > torch.tensor(PERCENTAGES)[None]) ^ noise).double()
        per_image = torch.tensor([road_auc(PERCENTAGES, row.tolist()) for row in hits])
        exact = per_image.std(unbiased=False).item() / math.sqrt(images)
        bound = auc_standard_error(PERCENTAGES, hits.mean(0).tolist(), images)
        assert exact <= bound + 1e-12


def test_no_noise_when_every_image_agrees():
    assert auc_standard_error(PERCENTAGES, [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0], 10) == 0.0
