"""Grad-CAM, Grad-CAM++, Score-CAM and Ablation-CAM from the grad-cam package (pytorch-grad-cam), batched.

grad-cam is handed our ``Classifier`` module: its forward takes the pixel-space images the metrics use and
normalises them itself, so Score-CAM's channel masks darken pixels exactly as our masking does. Each image
gets its own ``ClassifierOutputTarget`` (a shorter list silently explains only the first images); the
target score is the logit (grad-cam's convention). Maps come back min-max scaled to [0, 1] at input size.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator
from typing import Any

import torch
from pytorch_grad_cam import AblationCAM, GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from pipeline.errors import UserError
from pipeline.models.auxiliary import tokens_to_grid
from pipeline.models.classifiers import Classifier
from pipeline.models.folding import folded_convolution

CAM_METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
}
# The module each backbone's CAMs read, named inside the raw network; --target-layer overrides it.
TARGET_LAYERS = {
    "vgg16": "features.30",  # features[-1], the last max-pool: 7 x 7 (P-TAME's R = 49); features.29 is 14 x 14
    "resnet50": "layer4.2",  # layer4[-1]
    "vit_b_16": "encoder.layers.encoder_layer_11.ln_1",  # the last block's output has no gradient to the class token
    # timm tf_efficientnet_liteN: the last 1x1 conv's BatchNorm + ReLU6 (1280 channels, 7 x 7), as features[-1]
    # of torchvision's MobileNets in grad-cam's README
    **{f"efficientnet_lite{level}": "bn2" for level in range(3)},
}


def target_layer_name(classifier: Classifier, name: str | None = None) -> str:
    """``name``, else the backbone's preset, else timm's last feature stage (``feature_info``)."""
    if name:
        return name
    if classifier.name in TARGET_LAYERS:
        return TARGET_LAYERS[classifier.name]
    stages = getattr(classifier.network, "feature_info", None)
    if stages:
        return stages[-1]["module"]
    raise UserError(
        f"no target-layer preset for backbone {classifier.name!r}; pass --target-layer with one of its "
        f"module names, e.g. {', '.join(_last_modules(classifier.network))}"
    )


def _last_modules(network: nn.Module, count: int = 8) -> list[str]:
    return [name for name, _ in network.named_modules() if name][-count:]


def find_layer(classifier: Classifier, name: str) -> nn.Module:
    """The module called ``name`` in the classifier's network, or a UserError listing real names."""
    modules = dict(classifier.network.named_modules())
    if not name or name not in modules:
        raise UserError(
            f"backbone {classifier.name!r} has no layer {name!r}; pass --target-layer with one of its "
            f"module names, e.g. {', '.join(_last_modules(classifier.network))}"
        )
    norm = folded_convolution(classifier.network, name)
    if norm:
        raise UserError(
            f"layer {name!r} of {classifier.name!r} has its BatchNorm {norm!r} folded into it (for speed), so it "
            f"outputs normalised values, not the raw convolution's; pass --target-layer {norm} (the BatchNorm's output)"
        )
    return modules[name]


class CamMethod:
    """One grad-cam method on one target layer of a frozen classifier; ``model`` (default: the classifier) is the
    network whose scores grad-cam explains, e.g. a CA-Stream model built on the classifier's modules."""

    def __init__(
        self,
        method: str,
        classifier: Classifier,
        layer: str | None = None,
        batch_size: int = 32,
        model: nn.Module | None = None,
    ):
        if method not in CAM_METHODS:
            raise UserError(f"unknown CAM method {method!r}; choose from {', '.join(CAM_METHODS)}")
        self.name = method
        self.cam_class = CAM_METHODS[method]
        self.classifier = classifier
        self.model = classifier if model is None else model
        self.layer_name = target_layer_name(classifier, layer)
        self.layer = find_layer(classifier, self.layer_name)
        self.tokens, self.grid = self._probe()
        # Score-CAM holds images x channels masked copies at once, so it takes one image per call; its
        # (and Ablation-CAM's) probing forwards go in batches of ``batch_size``.
        self.probe_batch = batch_size
        self.images_per_call = 1 if method == "scorecam" else batch_size

    @property
    def resolution(self) -> int:
        """Cells of the target layer's map (h x w) before upsampling."""
        return self.grid[0] * self.grid[1]

    @torch.no_grad()
    def _probe(self) -> tuple[bool, tuple[int, int]]:
        """Whether the target layer outputs transformer tokens, and its spatial grid."""
        shapes = []
        handle = self.layer.register_forward_hook(lambda module, inputs, output: shapes.append(output.shape))
        size = self.classifier.preprocessing.input_size
        try:
            self.classifier(torch.zeros(1, 3, size, size, device=self.classifier.mean.device))
        finally:
            handle.remove()
        if not shapes or len(shapes[0]) not in (3, 4):
            found = list(shapes[0]) if shapes else "never called"
            raise UserError(
                f"layer {self.layer_name!r} of {self.classifier.name!r} does not output a feature map "
                f"or tokens ({found}); choose another --target-layer"
            )
        if len(shapes[0]) == 3:
            side = math.isqrt(shapes[0][1])
            return True, (side, side)
        return False, (shapes[0][-2], shapes[0][-1])

    @contextlib.contextmanager
    def _cam(self) -> Iterator[BaseCAM]:
        """The grad-cam object, its hooks released afterwards. (grad-cam's own ``with`` form would also
        release them, but its ``__exit__`` prints and swallows an IndexError.)"""
        options: dict[str, Any] = {"reshape_transform": tokens_to_grid} if self.tokens else {}
        if self.cam_class is AblationCAM:  # a fresh ablation layer: grad-cam's default instance is shared
            options |= {
                "ablation_layer": AblationLayerVit() if self.tokens else AblationLayer(),
                "batch_size": self.probe_batch,
            }
        cam = self.cam_class(self.model, [self.layer], **options)
        cam.batch_size = self.probe_batch  # Score-CAM reads it as an attribute
        try:
            yield cam
        finally:
            cam.activations_and_grads.release()

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Maps [N, H, W] in [0, 1] of ``targets`` [N] for pixel-space ``images`` [N, 3, H, W]."""
        parts = []
        with self._cam() as cam, torch.inference_mode(False), torch.enable_grad():
            # The gradient-free methods draw a progress bar per image on stderr; the caller reports progress.
            quiet = contextlib.nullcontext() if cam.uses_gradients else contextlib.redirect_stderr(io.StringIO())
            with quiet:
                for start in range(0, images.shape[0], self.images_per_call):
                    chunk = slice(start, start + self.images_per_call)
                    batch = images[chunk].float().clone().requires_grad_(cam.uses_gradients)
                    wanted = [ClassifierOutputTarget(int(target)) for target in targets[chunk]]
                    parts.append(torch.from_numpy(cam(batch, wanted)))
        return torch.cat(parts).to(images.device)
