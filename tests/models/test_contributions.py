"""Per-layer contributions (P-TAME Table 2) against hand-computed values, beside the channel shares."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.models.contributions import contribution_metrics, layer_contributions
from pipeline.models.head import AttentionHead
from pipeline.models.loading import build_explainer, load_models
from tests.toy_models import TOY_MODEL


def test_contributions_match_a_hand_computed_softmax():
    head = AttentionHead([1, 2], num_classes=2)
    with torch.no_grad():
        head.fuse.weight.zero_()
        head.fuse.weight[1, 0] = math.log(2)  # class 1: softmax [2/4, 1/4, 1/4] -> branches [1/2, 1/2]
    # class 0 has uniform weights -> branches [1/3, 2/3], its channel shares
    assert head.channel_shares().tolist() == pytest.approx([1 / 3, 2 / 3])
    assert head.contributions().tolist() == pytest.approx([(1 / 3 + 1 / 2) / 2, (2 / 3 + 1 / 2) / 2])
    assert head.contributions(torch.tensor([1])).tolist() == pytest.approx([0.5, 0.5])


def test_contributions_sum_to_one_for_every_head_and_class_subset():
    torch.manual_seed(0)
    for channels in ([24, 40, 112, 320], [64, 128, 256, 512], [7]):
        head = AttentionHead(channels, num_classes=50)
        torch.nn.init.normal_(head.fuse.weight, std=3.0)
        for classes in (None, torch.tensor([3]), torch.tensor([0, 7, 49])):
            shares = head.contributions(classes)
            assert shares.shape == (len(channels),) and shares.sum().item() == pytest.approx(1.0)
            assert (shares > 0).all()


def test_layer_contributions_name_the_auxiliary_layers_and_average_trained_classes_apart():
    models = load_models(ModelConfig(**TOY_MODEL), torch.device("cpu"))
    explainer = build_explainer(models, ModelConfig(**TOY_MODEL), seed=0)
    head = explainer.head
    with torch.no_grad():
        head.fuse.weight.zero_()
        head.fuse.weight[4, :8] = 5.0  # class 4 leans on stage1
    head.target_counts[4] = 10
    entries = layer_contributions(explainer, min_count=10)
    assert [e.layer for e in entries] == ["stage1", "stage2", "stage3"]
    assert [e.channels for e in entries] == [8, 12, 16]
    assert sum(e.contribution for e in entries) == pytest.approx(1.0)
    assert sum(e.contribution_trained for e in entries) == pytest.approx(1.0)
    assert entries[0].contribution_trained > 0.9 > entries[0].contribution > entries[0].channel_share
    assert layer_contributions(explainer, min_count=11)[0].contribution_trained is None  # no class trained
    assert contribution_metrics(entries)["contribution_trained.stage1"] == entries[0].contribution_trained
    assert contribution_metrics(entries)["channel_share.stage3"] == pytest.approx(16 / 36)
