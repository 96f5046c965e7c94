"""ROAD masks, AUC and MoRF/LeRF curves on toy classifiers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline import config as configs
from pipeline.errors import UserError
from pipeline.metrics import road as road_module
from pipeline.metrics.inpainting import telea_impute
from pipeline.metrics.road import ORDERS, RoadProtocol, RoadResult, removal_masks, road, road_auc, road_masks

SIZE = 16


pytestmark = pytest.mark.usefixtures("single_thread")


def test_masks_remove_the_most_or_least_relevant_pixels() -> None:
    maps = torch.randperm(SIZE * SIZE, generator=torch.Generator().manual_seed(0)).float().view(1, SIZE, SIZE)
    for fraction in (0.1, 0.25, 0.9):
        count = round(fraction * SIZE * SIZE)
        morf = removal_masks(maps, fraction, "morf")
        lerf = removal_masks(maps, fraction, "lerf")
        assert morf.dtype == torch.bool and morf.shape == maps.shape
        assert morf.sum() == lerf.sum() == count
        assert torch.equal(morf, maps >= SIZE * SIZE - count)
        assert torch.equal(lerf, maps < count)


def test_masks_break_ties_deterministically() -> None:
    maps = torch.zeros(2, 4, 4)
    morf = removal_masks(maps, 0.25, "morf")
    assert morf.sum(dim=(1, 2)).tolist() == [4, 4]
    assert torch.equal(morf, removal_masks(maps, 0.25, "morf"))
    with pytest.raises(ValueError):
        removal_masks(maps, 0.25, "random")


def test_road_masks_sort_once_per_order_and_equal_each_removal_mask() -> None:
    maps = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(4)).round(decimals=1)  # many ties
    percentages = (10, 20, 30, 40, 50, 70, 90)
    masks = road_masks(maps, percentages)
    assert masks.shape == (2, 7, 3, SIZE, SIZE)
    for i, order in enumerate(ORDERS):
        for j, percentage in enumerate(percentages):
            assert torch.equal(masks[i, j], removal_masks(maps, percentage / 100, order))


def test_auc_is_the_trapezoid_with_endpoints() -> None:
    scores = [0.9, 0.6, 0.4, 0.2]
    expected = 0.05 + 0.15 * 0.9 + 0.2 * 0.6 + 0.2 * 0.4 + 0.25 * 0.2
    assert road_auc([10, 30, 50, 70], scores) == pytest.approx(expected)
    assert road_auc([50], [1.0]) == pytest.approx(1.0 * 0.5 + 0.5 * 0.5)


def test_auc_over_the_papers_percentages_is_the_closed_form() -> None:
    """P-TAME's Table 1: x = [0, .1, .3, .5, .7, 1], y = [1, s10, s30, s50, s70, 0]."""
    generator = torch.Generator().manual_seed(4)
    for _ in range(20):
        s10, s30, s50, s70 = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        closed_form = 0.05 + 0.15 * s10 + 0.2 * s30 + 0.2 * s50 + 0.25 * s70
        assert road_auc([10, 30, 50, 70], [s10, s30, s50, s70]) == pytest.approx(closed_form, abs=1e-12)


class RegionClassifier(nn.Module):
    """Class 1 when the mean brightness of the top-left quarter exceeds 0.5, else class 0."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        brightness = images[:, :, : SIZE // 2, : SIZE // 2].mean(dim=(1, 2, 3))
        return torch.stack([0.5 - brightness, brightness - 0.5], dim=1) * 10


class ConstantClassifier(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[2.0, 1.0, 0.0]]).expand(images.shape[0], -1)


def bright_region_images(count: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    images = 0.1 + 0.2 * torch.rand(count, 3, SIZE, SIZE, generator=generator)
    images[:, :, : SIZE // 2, : SIZE // 2] += 0.6
    return images


def test_map_on_the_decisive_region_gives_morf_below_lerf() -> None:
    images = bright_region_images(5)
    maps = torch.rand(5, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 0.1
    maps[:, : SIZE // 2, : SIZE // 2] += 1
    classifier = RegionClassifier()
    targets = classifier(images).argmax(dim=1)
    assert targets.eq(1).all()
    result = road(classifier, images, maps, targets, batch_size=16, generator=torch.Generator().manual_seed(2))
    assert result.percentages == [10, 20, 30, 40, 50, 70, 90]
    assert result.morf[2:] == [0.0] * 5  # the whole region (25 %) is gone from 30 % on
    assert result.lerf[:5] == [1.0] * 5  # the region is untouched up to 75 %
    assert result.morf_auc < result.lerf_auc
    assert result.morf_auc == pytest.approx(road_auc(result.percentages, result.morf))


def test_constant_classifier_is_always_right() -> None:
    images = torch.rand(3, 3, SIZE, SIZE)
    maps = torch.rand(3, SIZE, SIZE)
    result = road(ConstantClassifier(), images, maps, torch.zeros(3, dtype=torch.long), RoadProtocol((10, 50, 90)))
    assert result.morf == result.lerf == [1.0, 1.0, 1.0]
    assert result.morf_auc == pytest.approx(0.95)
    assert result.metrics() == pytest.approx(
        {
            "road_morf_auc": 0.95,
            "road_lerf_auc": 0.95,
            **{f"road_{order}_{p}": 1.0 for order in ("morf", "lerf") for p in (10, 50, 90)},
        }
    )


def test_result_metrics_keys() -> None:
    result = RoadResult([10, 20], [0.5, 0.25], [0.75, 0.5], 0.1, 0.2, "telea imputation, 10/20 % removed")
    assert result.metrics() == {
        "road_morf_auc": 0.1,
        "road_lerf_auc": 0.2,
        "road_morf_10": 0.5,
        "road_lerf_10": 0.75,
        "road_morf_20": 0.25,
        "road_lerf_20": 0.5,
    }


def test_progress_is_reported_per_chunk() -> None:
    seen: list[int] = []
    images, maps = torch.rand(10, 3, 8, 8), torch.rand(10, 8, 8)
    road(
        ConstantClassifier(), images, maps, torch.zeros(10, dtype=torch.long), RoadProtocol((50,)), progress=seen.append
    )
    assert seen[-1] == 10 and seen == sorted(seen)


def test_scores_do_not_depend_on_how_many_images_are_imputed_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU imputes 8 images' masks together and an accelerator 64: the scores are the same."""
    generator = torch.Generator().manual_seed(3)
    images, maps = torch.rand(12, 3, SIZE, SIZE, generator=generator), torch.rand(12, SIZE, SIZE, generator=generator)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 4))
    torch.nn.init.normal_(classifier[1].weight, generator=generator)
    targets = classifier(images).argmax(dim=1)
    results = []
    for per_chunk in (3, 12):
        monkeypatch.setattr(road_module, "_IMAGES_PER_CHUNK", per_chunk)
        results.append(road(classifier, images, maps, targets, RoadProtocol(noise=0.0)))
    assert results[0] == results[1]
    assert 0 < results[0].morf_auc < results[0].lerf_auc < 1, "the classifier is sensitive to the removed pixels"


def tiny_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5)).eval()


def test_telea_road_runs_end_to_end_and_names_its_protocol() -> None:
    generator = torch.Generator().manual_seed(5)
    images, maps = torch.rand(6, 3, SIZE, SIZE, generator=generator), torch.rand(6, SIZE, SIZE, generator=generator)
    classifier = tiny_cnn(0)
    with torch.no_grad():
        targets = classifier(images).argmax(dim=1)
    result = road(classifier, images, maps, targets, RoadProtocol((10, 30, 50, 70), "telea"))
    assert result.percentages == [10, 30, 50, 70]
    assert all(0 <= score <= 1 for score in result.morf + result.lerf)
    assert result.lerf_auc == pytest.approx(road_auc(result.percentages, result.lerf))
    assert result.protocol == "telea imputation, 10/30/50/70 % removed"
    by_callable = road(classifier, images, maps, targets, RoadProtocol((10, 30, 50, 70), telea_impute))
    assert by_callable.morf == result.morf
    noisy = road(classifier, images, maps, targets, RoadProtocol((10, 50)))
    assert noisy.protocol == "noisy_linear (noise 0.01) imputation, 10/50 % removed"


def test_unknown_imputer_is_an_error() -> None:
    images, maps = torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8)
    with pytest.raises(ValueError, match="noisy_linear, telea"):
        road(ConstantClassifier(), images, maps, torch.zeros(1, dtype=torch.long), RoadProtocol(imputer="zeros"))


def test_unknown_imputer_in_a_config_is_a_one_line_error() -> None:
    assert configs.load(overrides=["evaluation.imputer=telea"]).evaluation.imputer == "telea"
    with pytest.raises(UserError) as error:
        configs.load(overrides=["evaluation.imputer=inpaint"])
    assert str(error.value) == "evaluation.imputer: 'inpaint' is not one of 'noisy_linear', 'telea'"
