"""Baselines: our batched CAMs equal grad-cam called directly, ViT tokens, target layers, and RISE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from pipeline.baselines.cam import CAM_METHODS, CamMethod, find_layer
from pipeline.baselines.rise import RiseMasks, RiseParameters, rise_saliency
from pipeline.errors import UserError
from pipeline.models.classifiers import Classifier, build_network, load_classifier
from tests.toy_models import OBJECT, SIZE, TOY_PREPROCESSING, synthetic_batch, tiny_classifier, trained_backbone

pytestmark = pytest.mark.usefixtures("single_thread")
LAYER = "features.7"  # the toy classifier's last ReLU (32 channels, 8 x 8)


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier("toy", tiny_classifier(), TOY_PREPROCESSING)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_our_batched_maps_equal_grad_cam_called_directly_per_image(classifier, images, method):
    targets = torch.tensor([3, 0, 7, 7, 1])  # each image its own class, not the prediction
    ours = CamMethod(method, classifier, LAYER, batch_size=2)(images, targets)  # batches of 2, 2 and 1

    direct = []
    for image, target in zip(images, targets):
        with CAM_METHODS[method](model=classifier, target_layers=[find_layer(classifier, LAYER)]) as cam:
            frozen_input = image[None].clone().requires_grad_(cam.uses_gradients)
            direct.append(cam(input_tensor=frozen_input, targets=[ClassifierOutputTarget(int(target))])[0])
    assert ours.shape == (5, 32, 32) and ours.dtype == torch.float32
    assert ours.flatten(1).amax(1).gt(0.99).sum() >= 3, "the comparison is not between empty maps"
    torch.testing.assert_close(ours, torch.from_numpy(np.stack(direct)), atol=1e-5, rtol=1e-4)


def test_gradient_cams_work_under_inference_mode(classifier, images):
    targets = torch.tensor([1, 2, 3, 4, 5])
    cam = CamMethod("gradcam", classifier, LAYER)
    expected = cam(images, targets)
    with torch.inference_mode():
        torch.testing.assert_close(cam(images.clone(), targets), expected)
    assert cam.resolution == 64


def test_vit_tokens_are_reshaped_to_their_grid():
    network, preprocessing, _ = build_network("tests.toy_models:tiny_vit")
    vit = Classifier("tiny_vit", network, preprocessing)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 4, 9])
    for method in ("gradcam", "ablationcam"):
        cam = CamMethod(method, vit, "encoder.layers.encoder_layer_1.ln_1")
        maps = cam(images, targets)
        assert cam.tokens and cam.grid == (4, 4) and cam.resolution == 16
        assert maps.shape == (3, 32, 32) and maps.amax() > 0.99 and maps.amin() >= 0


def test_a_missing_target_layer_or_preset_is_a_user_error(classifier):
    with pytest.raises(UserError, match="has no layer 'features.99'.*--target-layer.*features.7"):
        CamMethod("gradcam", classifier, "features.99")
    with pytest.raises(UserError, match="no target-layer preset for backbone 'toy'"):
        CamMethod("gradcam", classifier)


def test_the_efficientnet_lite_preset_reads_a_7x7_map():
    lite = load_classifier("efficientnet_lite0", weights="random")
    cam = CamMethod("gradcam", lite)
    assert cam.layer_name == "bn2" and cam.grid == (7, 7) and not cam.tokens


@pytest.mark.system  # builds the paper's real backbones
@pytest.mark.parametrize(
    "backbone, layer, grid",
    [
        ("vgg16", "features.30", (7, 7)),
        ("resnet50", "layer4.2", (7, 7)),
        ("vit_b_16", "encoder.layers.encoder_layer_11.ln_1", (14, 14)),
    ],
)
def test_paper_backbone_presets(backbone, layer, grid):
    cam = CamMethod("gradcam", load_classifier(backbone, weights="random"))
    assert (cam.layer_name, cam.grid, cam.tokens) == (layer, grid, backbone == "vit_b_16")
    maps = cam(torch.rand(2, 3, 224, 224), torch.tensor([1, 2]))
    assert maps.shape == (2, 224, 224)


def test_rise_masks_are_seeded_binary_grids_upsampled_and_shifted():
    settings = RiseParameters(masks=400, seed=3)
    masks = RiseMasks(settings, (32, 32))[0:400]
    assert masks.shape == (400, 32, 32) and masks.min() >= 0 and masks.max() <= 1
    assert masks.mean().item() == pytest.approx(settings.keep, abs=0.03)
    assert torch.equal(RiseMasks(settings, (32, 32))[100:110], masks[100:110])
    assert not torch.equal(RiseMasks(RiseParameters(masks=400, seed=4), (32, 32))[0:10], masks[:10])


def test_rise_does_not_depend_on_how_the_masks_are_chunked(classifier, images):
    targets = torch.tensor([0, 1, 2, 3, 4])
    whole = rise_saliency(classifier, images, targets, RiseParameters(masks=60, batch_size=60))
    chunked = rise_saliency(classifier, images, targets, RiseParameters(masks=60, batch_size=7))
    torch.testing.assert_close(whole, chunked, atol=1e-5, rtol=1e-5)
    assert whole.amin() == 0 and whole.amax() == pytest.approx(1)


@pytest.mark.slow  # 2000 RISE masks on 16 images, after training the synthetic task's backbone
def test_rise_puts_at_least_twice_the_object_share_of_its_mass_on_the_object():
    generator = torch.Generator().manual_seed(0)
    classifier = Classifier("synthetic", trained_backbone(generator), TOY_PREPROCESSING)
    images, labels, where = synthetic_batch(16, generator)
    with torch.no_grad():
        predictions = classifier(images).argmax(1)
    assert (predictions == labels).float().mean() > 0.9
    saliency = rise_saliency(classifier, images, predictions, RiseParameters(masks=2000, batch_size=500))
    on_object = (saliency * where).flatten(1).sum(1) / saliency.flatten(1).sum(1)
    ratio = on_object.mean().item() / (OBJECT * OBJECT / (SIZE * SIZE))
    print(f"RISE mass on object / object area share = {ratio:.2f}x (uniform = 1x)")
    assert ratio >= 2.0
