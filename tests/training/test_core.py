"""Head, masking, loss and training-step invariants on tiny random networks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import LossConfig, ModelConfig, TrainConfig
from pipeline.models.auxiliary import LAYER_PRESETS, backbone_features, load_auxiliary, tokens_to_grid
from pipeline.models.classifiers import CPU_PART_IMAGES, in_parts
from pipeline.models.coverage import ClassCoverage
from pipeline.models.head import AttentionHead, activate, minmax, upsample
from pipeline.models.loading import build_explainer, load_models
from pipeline.training.loop import train, training_step
from pipeline.training.loss import area_loss, class_subset, ptame_loss, variation_loss
from pipeline.training.masking import mask_images
from tests.toy_models import TOY_MODEL

CPU_PRESETS = [
    "resnet18",
    "resnet50",
    "mobilenet_v3_small",
    "mnasnet0_5",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
]
EXPECTED_CHANNELS = {
    "resnet18": [64, 128, 256, 512],
    "resnet50": [512, 1024, 2048],
    "mobilenet_v3_small": [96, 96, 96, 576],
    "mnasnet0_5": [160, 1280, 1280, 1280],
    "efficientnet_lite0": [24, 40, 112, 320],
    "efficientnet_lite1": [24, 40, 112, 320],
    "efficientnet_lite2": [24, 48, 120, 352],
}


@pytest.fixture(scope="module")
def toy():
    models = load_models(ModelConfig(**TOY_MODEL), torch.device("cpu"))
    return models


@pytest.mark.parametrize("preset", CPU_PRESETS)
def test_head_shapes_for_every_auxiliary_preset(preset):
    weights = None if preset.startswith("efficientnet") else "random"
    auxiliary = load_auxiliary(preset, weights=weights)
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        features = auxiliary(images)
    assert [f.shape[1] for f in features] == EXPECTED_CHANNELS[preset]
    largest = max(f.shape[-1] for f in features)
    head = AttentionHead([f.shape[1] for f in features], num_classes=1000)
    with torch.no_grad():
        assert head(features, torch.tensor([3, 7, 999])).shape == (2, 3, largest, largest)
        assert head(features, torch.tensor([5, 6]), per_image=True).shape == (2, 1, largest, largest)
    assert len(LAYER_PRESETS[preset]) == len(features)


def test_vit_tokens_become_a_grid_without_the_class_token():
    tokens = torch.arange(2 * 197 * 4, dtype=torch.float32).view(2, 197, 4)
    grid = tokens_to_grid(tokens)
    assert grid.shape == (2, 4, 14, 14)
    assert torch.equal(grid[:, :, 0, 0], tokens[:, 1])


def test_selected_class_head_equals_upsample_concat_fuse(toy):
    torch.manual_seed(0)
    head = AttentionHead(toy.channels, toy.num_classes).eval()
    features = toy.auxiliary(torch.rand(3, 3, 32, 32))
    size = features[0].shape[-2:]
    upsampled = [upsample(branch(f), size) for branch, f in zip(head.branches, features)]
    naive = head.fuse(torch.cat(upsampled, dim=1))
    classes = torch.tensor([4, 1, 9])
    assert torch.allclose(head(features), naive, atol=1e-5)
    assert torch.allclose(head(features, classes), naive[:, classes], atol=1e-5)
    assert torch.allclose(head(features, classes, per_image=True)[:, 0], naive[torch.arange(3), classes], atol=1e-5)


def test_sigmoid_while_training_minmax_at_inference():
    raw = torch.randn(2, 3, 5, 5) * 4
    assert torch.allclose(activate(raw, training=True), torch.sigmoid(raw))
    scaled = activate(raw, training=False)
    assert torch.allclose(scaled.flatten(2).amin(-1), torch.zeros(2, 3))
    assert torch.allclose(scaled.flatten(2).amax(-1), torch.ones(2, 3))
    assert torch.allclose(minmax(torch.ones(1, 1, 2, 2)), torch.zeros(1, 1, 2, 2))


def test_masking_multiplies_in_pixel_space_then_the_backbone_renormalises():
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    pixels = torch.rand(2, 3, 8, 8)
    normalized = (pixels - mean) / std
    maps = torch.rand(2, 4, 4)
    expected_pixels = (normalized * std + mean) * F.interpolate(maps[:, None], size=(8, 8), mode="bilinear")
    masked = mask_images(pixels, maps, mean)
    assert torch.allclose(masked, expected_pixels, atol=1e-6)
    assert masked.min() >= 0 and masked.max() <= 1
    assert torch.equal(mask_images(pixels, torch.ones(2, 4, 4), mean), pixels)
    assert torch.equal(mask_images(pixels, torch.zeros(2, 4, 4), mean), torch.zeros_like(pixels))
    mean_coloured = mask_images(pixels, torch.zeros(2, 4, 4), mean, mode="normalized")
    assert torch.allclose(mean_coloured, mean.expand_as(pixels))


def test_loss_terms_match_hand_computed_values():
    maps = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])  # one image, one class, 2x2
    assert area_loss(maps, power=2.0, epsilon=0.0).item() == pytest.approx((0 + 1 + 0.25 + 0.25) / 4)
    assert area_loss(maps, power=1.0, epsilon=0.5).item() == pytest.approx((0.5 + 1.5 + 1.0 + 1.0) / 4)
    # vertical diffs: 0.5-0, 0.5-1 -> 0.25 + 0.25; horizontal: 1-0, 0.5-0.5 -> 1 + 0; over 4 elements
    assert variation_loss(maps).item() == pytest.approx((0.25 + 0.25 + 1.0 + 0.0) / 4)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 0])
    ce = -(torch.log_softmax(logits, 1)[0, 0] + torch.log_softmax(logits, 1)[1, 0]) / 2
    terms = ptame_loss(logits, targets, maps, LossConfig(lambda1=0.2, lambda2=0.5, lambda_area=2.0, area_epsilon=0.0))
    assert terms.cross_entropy.item() == pytest.approx(ce.item())
    expected = 0.2 * ce.item() + 0.5 * 0.375 + 0.3 * 0.375
    assert terms.total.item() == pytest.approx(expected)


def test_class_subset_holds_every_prediction_and_has_lambda_rand_classes():
    targets = torch.tensor([7, 3, 7, 9])
    classes, position = class_subset(targets, 6, 20, torch.Generator().manual_seed(0))
    assert classes.numel() == 6 and classes.unique().numel() == 6
    assert torch.equal(classes[position], targets)
    small, position = class_subset(targets, 1, 20)
    assert set(small.tolist()) == {3, 7, 9} and torch.equal(small[position], targets)


def test_gradients_reach_the_head_only_and_frozen_networks_stay_in_eval(toy):
    explainer = build_explainer(toy, ModelConfig(**TOY_MODEL), seed=0)
    explainer.train()
    assert not explainer.classifier.training and not explainer.auxiliary.training
    before = [p.clone() for p in explainer.head.parameters()]
    terms = training_step(explainer, torch.rand(4, 3, 32, 32), LossConfig(lambda1=0.6, lambda2=0.3))
    terms.total.backward()
    assert all(p.grad is None for p in explainer.classifier.parameters())
    assert all(p.grad is None for p in explainer.auxiliary.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in explainer.head.parameters())
    batches = [(torch.rand(4, 3, 32, 32), torch.zeros(4))] * 3
    train(explainer, batches, 3, LossConfig(), TrainConfig(max_lr=1e-2), torch.device("cpu"), progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(before, explainer.head.parameters()))
    assert not explainer.classifier.network.training and not explainer.auxiliary.network.training
    assert all(not m.training for m in explainer.classifier.modules())


def test_ttame_mode_reads_the_backbones_own_layers_without_disturbing_its_forward(toy):
    features = backbone_features(toy.classifier, ["features.2", "features.5"])
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = toy.classifier(images)
        maps = features(images)
        assert torch.equal(toy.classifier(images), logits)
    assert [m.shape[1:] for m in maps] == [(16, 32, 32), (32, 16, 16)]


def test_training_counts_each_explained_class_and_each_member_of_s(toy):
    explainer = build_explainer(toy, ModelConfig(**TOY_MODEL), seed=0)
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        predicted = explainer.classifier(images).argmax(1)
    batches = [(images, torch.zeros(6))] * 2
    train(explainer, batches, 2, LossConfig(lambda_rand=4), TrainConfig(), torch.device("cpu"), progress=False)
    head = explainer.head
    assert torch.equal(head.target_counts, 2 * torch.bincount(predicted, minlength=toy.num_classes))
    # every step computes one map per image for each of the max(4, distinct predictions) classes of S
    assert head.subset_counts.sum() == 2 * 6 * max(4, predicted.unique().numel())
    assert bool((head.subset_counts[predicted] >= 12).all())
    coverage = ClassCoverage.of(head, min_count=2)
    assert torch.equal(coverage.covered(predicted), torch.ones(6, dtype=torch.bool))
    unseen = torch.tensor([c for c in range(toy.num_classes) if c not in predicted.tolist()])
    assert coverage.fraction(torch.cat([predicted, unseen])) == pytest.approx(6 / (6 + unseen.numel()))
    explanation = explainer.explain(images, torch.cat([predicted[:3], unseen[:3]]), min_count=2)
    assert explanation.trained.tolist() == [True] * 3 + [False] * 3
    assert set(head.state_dict()) >= {"target_counts", "subset_counts"}


def test_networks_run_in_parts_on_the_cpu_with_the_outputs_and_input_gradients_of_one_pass(toy):
    classifier, auxiliary = toy.classifier, toy.auxiliary
    images = torch.rand(2 * CPU_PART_IMAGES + 1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    calls = []

    def classify(part: torch.Tensor) -> torch.Tensor:
        calls.append(part.shape[0])
        return classifier(part)

    whole, parted = images.clone().requires_grad_(True), images.clone().requires_grad_(True)
    logits, parted_logits = classifier(whole), in_parts(classify, parted)
    assert calls == [CPU_PART_IMAGES, CPU_PART_IMAGES, 1]
    assert torch.allclose(parted_logits, logits, atol=1e-6)
    logits.logsumexp(1).sum().backward()
    parted_logits.logsumexp(1).sum().backward()
    assert torch.allclose(parted.grad, whole.grad, atol=1e-6)
    with torch.no_grad():
        features = auxiliary(images)  # the auxiliary network runs in parts itself
        whole_features = auxiliary._features(images)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(features, whole_features))
