"""Parity with the authors' code: the head's ×2 upsampling, both variation forms, S, the paper's run files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline import config as configs
from pipeline.config import LossConfig
from pipeline.data.sources import imagenet_index_list
from pipeline.errors import UserError
from pipeline.hpo.ax_study.space import load_search_space
from pipeline.hpo.trials.trial_configs import check_space_fits
from pipeline.models.head import AttentionHead, upsample
from pipeline.training.loss import ptame_loss, reference_class_subset, reference_variation_loss, variation_loss

ROOT = Path(__file__).resolve().parents[2]
PAPER_RUNS = sorted((ROOT / "experiments" / "paper").glob("*.yaml"))


def reference_head_maps(head: AttentionHead, features: list[torch.Tensor]) -> torch.Tensor:
    """The authors' order: each branch upsampled by log2(56 / size) ×2 steps, concatenated, fused."""
    resolution = features[0].shape[-1]
    step = nn.Upsample(scale_factor=2, mode="bilinear")
    upsampled = []
    for branch, part in zip(head.branches, features):
        hidden = branch(part)
        for _ in range(int(math.log2(resolution / part.shape[-1]))):
            hidden = step(hidden)
        upsampled.append(hidden)
    return head.fuse(torch.cat(upsampled, dim=1))


def test_head_maps_equal_the_reference_formulation():
    torch.manual_seed(0)
    channels, sizes = [8, 12, 16, 20], [56, 28, 14, 7]
    head = AttentionHead(channels, num_classes=30).eval()
    nn.init.normal_(head.fuse.weight)
    features = [torch.randn(3, c, s, s) for c, s in zip(channels, sizes)]
    with torch.no_grad():
        expected = reference_head_maps(head, features)
        classes = torch.tensor([4, 17, 29, 0])
        assert torch.allclose(head(features, classes), expected[:, classes], atol=1e-5)
        assert torch.allclose(head(features), expected, atol=1e-5)
        own = torch.tensor([5, 5, 21])
        per_image = head(features, own, per_image=True)
        assert torch.allclose(per_image[:, 0], expected[torch.arange(3), own], atol=1e-5)
        # one ×8 interpolation is measurably different: the reason for the steps
        direct = nn.functional.interpolate(features[3][:, :1], size=(56, 56), mode="bilinear")
        assert not torch.allclose(upsample(features[3][:, :1], (56, 56)), direct, atol=1e-3)


def test_upsampling_by_a_ratio_that_is_not_a_power_of_two_interpolates_once():
    maps = torch.randn(2, 3, 7, 7)
    direct = nn.functional.interpolate(maps, size=(21, 21), mode="bilinear", align_corners=False)
    assert torch.equal(upsample(maps, (21, 21)), direct)
    assert upsample(maps, (7, 7)) is maps


MAPS = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])  # one image, one class, 2x2


def test_paper_variation_is_a_per_element_mean():
    # vertical diffs 0.5, -0.5 -> 0.25 + 0.25; horizontal 1, 0 -> 1 + 0; over 4 elements
    assert variation_loss(MAPS).item() == pytest.approx(1.5 / 4)


def test_reference_variation_matches_hand_computed_values():
    # border (p = 2): rows [0, 1] -> 1 and [0.5, 0.5] -> 0.5, columns [0, 0.5] -> 0.25 and [1, 0.5] -> 1.25
    assert reference_variation_loss(MAPS, 0.0, 2.0).item() == pytest.approx(1.5 / 2)
    assert reference_variation_loss(MAPS, 0.3, 2.0).item() == pytest.approx((1.5 + 0.3 * 3.0) / 2)
    # p = 1: |diffs| 0.5 + 0.5 + 1 + 0 = 2; edges 1 + 1 + 0.5 + 1.5 = 4
    assert reference_variation_loss(MAPS, 0.3, 1.0).item() == pytest.approx(2.0 + 0.3 * 4.0)
    # divided by p times the batch size, not by the number of maps or pixels
    two_images = torch.cat([MAPS, MAPS])
    assert reference_variation_loss(two_images, 0.3, 2.0).item() == pytest.approx((1.5 + 0.9) / 2)
    three_classes = MAPS.expand(1, 3, 2, 2)
    assert reference_variation_loss(three_classes, 0.0, 2.0).item() == pytest.approx(3 * 1.5 / 2)


def test_reference_over_paper_variation_is_k_h_w_over_two():
    maps = torch.rand(4, 6, 14, 14, generator=torch.Generator().manual_seed(1))
    ratio = reference_variation_loss(maps, 0.0, 2.0) / variation_loss(maps)
    assert ratio.item() == pytest.approx(6 * 14 * 14 / 2, rel=1e-5)


def test_loss_uses_the_configured_form_and_an_explicit_lambda3():
    logits, targets = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    ce = torch.nn.functional.cross_entropy(logits, targets).item()
    paper = ptame_loss(logits, targets, MAPS, LossConfig(lambda1=0.2, lambda2=0.5, lambda_area=1.0, area_epsilon=0))
    assert paper.total.item() == pytest.approx(0.2 * ce + 0.5 * 0.5 + 0.3 * 0.375)
    reference = LossConfig(
        lambda1=0.07, lambda2=0.98, lambda3=1e-4, lambda_area=1.0, area_epsilon=0, variation="reference"
    )
    terms = ptame_loss(logits, targets, MAPS, reference)
    assert terms.variation.item() == pytest.approx(1.2)
    assert terms.total.item() == pytest.approx(0.07 * ce + 0.98 * 0.5 + 1e-4 * 1.2)


def test_reference_class_subset_keeps_duplicates():
    targets = torch.tensor([7, 3, 7, 9])
    classes, position = reference_class_subset(targets)
    assert torch.equal(classes, targets) and torch.equal(classes[position], targets)


@pytest.mark.parametrize(
    "override, allowed",
    [("loss.variation=smooth", "'paper', 'reference'"), ("loss.class_subset=random", "'paper', 'reference'")],
)
def test_an_unknown_loss_form_is_a_one_line_error_naming_the_choices(override, allowed):
    with pytest.raises(UserError) as error:
        configs.load(None, [override])
    assert str(error.value).count("\n") == 0
    assert override.split("=")[0] in str(error.value) and allowed in str(error.value)


def test_reference_only_keys_are_refused_with_the_paper_form():
    with pytest.raises(UserError, match="loss.border_penalty = 0.5 only acts with loss.variation = 'reference'"):
        configs.load(None, ["loss.border_penalty=0.5"])
    assert configs.load(None, ["loss.variation=reference", "loss.border_penalty=0.5"]).loss.border_penalty == 0.5
    with pytest.raises(UserError, match="loss.lambda_rand"):
        configs.load(None, ["loss.class_subset=reference", "loss.lambda_rand=8"])


def test_an_explicit_lambda3_lifts_the_sum_to_one_rule():
    with pytest.raises(UserError, match="lambda3 = 1 - lambda1 - lambda2 would be negative"):
        configs.load(None, ["loss.lambda1=0.1", "loss.lambda2=0.95"])
    loss = configs.load(None, ["loss.lambda1=0.1", "loss.lambda2=0.95", "loss.lambda3=0.0001"]).loss
    assert loss.variation_weight == 0.0001
    assert configs.load(None, ["loss.lambda1=0.2", "loss.lambda2=0.5"]).loss.variation_weight == pytest.approx(0.3)
    with pytest.raises(UserError, match="loss.lambda3 = -0.1 must be >= 0"):
        configs.load(None, ["loss.lambda3=-0.1"])


def test_the_six_published_runs_are_there():
    assert [path.stem for path in PAPER_RUNS] == [
        "tab1_resnet50",
        "tab1_vgg16",
        "tab1_vit_b_16",
        "tab2_mnasnet",
        "tab2_mobilenetv3",
        "tab2_resnet18",
    ]


@pytest.mark.parametrize("path", PAPER_RUNS, ids=lambda path: path.stem)
def test_every_published_run_loads_with_the_authors_loss_and_protocol(path):
    config = configs.load(path)
    assert config.loss.variation == "reference" and config.loss.class_subset == "reference"
    assert config.evaluation.imputer == "telea" and config.evaluation.percentages == [10, 30, 50, 70]
    assert config.train.batch_size == 32 and config.train.epochs == 1 and config.train.seed == 12345
    assert config.loss.lambda3 is not None and config.data.index_lists == "reference"


def test_the_authors_evaluation_lists_are_disjoint_2000_image_samples_of_imagenet_val():
    val, test = imagenet_index_list("val", "reference"), imagenet_index_list("test", "reference")
    assert len(set(val)) == len(set(test)) == 2000 and not set(val) & set(test)
    assert val[:4] == [16635, 986, 47774, 42776] and 0 <= min(val + test) and max(val + test) < 50_000
    assert val != imagenet_index_list("val")


def test_the_authors_sweep_loads_and_fits_the_reference_loss_form():
    space = load_search_space(ROOT / "search_spaces" / "reference.yaml")
    assert space.thresholds == {"road_morf_auc": 0.36, "road_lerf_auc": 0.60}
    assert space.contains(
        {
            "max_lr": 1e-4,
            "weight_decay": 1e-3,
            "lambda1": 0.1,
            "lambda2": 0.8,
            "border_penalty": 0.3,
            "lambda_area": 0.5,
        }
    )
    assert not space.contains(
        {
            "max_lr": 1e-4,
            "weight_decay": 1e-3,
            "lambda1": 0.1,
            "lambda2": 0.7,
            "border_penalty": 0.3,
            "lambda_area": 0.5,
        }
    )
    paper_run = configs.read_yaml(PAPER_RUNS[0])
    with pytest.raises(UserError, match="fixes loss.lambda3 = 0.0; add --set loss.lambda3=null"):
        check_space_fits(paper_run, space)
    check_space_fits(configs.apply_overrides(paper_run, ["loss.lambda3=null"]), space)
    with pytest.raises(UserError, match="sets loss.border_penalty = 0.0, which the experiment config does not"):
        check_space_fits(configs.read_yaml(ROOT / "experiments" / "demo.yaml"), space)


def test_thresholds_must_name_every_objective(tmp_path):
    text = (ROOT / "search_spaces" / "reference.yaml").read_text()
    path = tmp_path / "space.yaml"
    path.write_text(
        text.replace("thresholds: {road_morf_auc: 0.36, road_lerf_auc: 0.60}", "thresholds: {road_morf_auc: 0.36}")
    )
    with pytest.raises(UserError, match="thresholds: give one threshold per objective"):
        load_search_space(path)
