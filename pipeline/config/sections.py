"""The sections of an experiment config (model, data, loss, train, evaluation, checkpoints, castream) as typed
pydantic dataclasses, and the constants their defaults and checks use."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, Strict, model_validator
from pydantic.dataclasses import dataclass

from pipeline.errors import UserError

# The authors' code's defaults for its variation term (configs/model/loss/classic.yaml).
# How far past lambda1 + lambda2 <= 1 a point may lie: BoTorch's optimiser lands on that constraint up to round-off
# (seen: 1.8e-9 over it); the search space's constraints accept the same.
CONSTRAINT_ROUND_OFF = 1e-6
REFERENCE_BORDER_PENALTY = 0.3
REFERENCE_VARIATION_POWER = 2.0
# A class counts as trained once it was the explained class of at least this many training images
# (``evaluation.min_class_count``; `pipeline.models.coverage` uses it as its default).
DEFAULT_MIN_COUNT = 10

# YAML's own types only: an int is a fine float, but "3" is no number and 1 is no bool.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
STRICT = ConfigDict(extra="forbid")

Imputer = Literal["noisy_linear", "telea"]  # ROAD's (`pipeline.metrics.road`)
DEVICE_HELP = "cpu, cuda, cuda:N or auto (default: a CUDA device when there is one, else the CPU)"


@dataclass(config=STRICT)
class ModelConfig:
    """The classifier being explained and the frozen auxiliary CNN that feeds the head."""

    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    auxiliary: str = "resnet18"
    auxiliary_layers: list[str] | None = None
    auxiliary_weights: str | None = None
    masking: Literal["pixel", "normalized"] = "pixel"


@dataclass(config=STRICT)
class DataConfig:
    """Where images come from. ``demo`` needs nothing; ``imagenet``/``folder`` need ``root``.

    ``decode`` chooses where training views of image files are decoded and augmented: ``cpu`` (PIL in the
    loader workers), ``gpu`` (workers read bytes, the GPU decodes), ``auto`` (the GPU when training on CUDA).
    ``index_lists`` picks ImageNet's 2000-image validation and test lists: this project's or the authors'.
    ``holdout``: the share of a plain folder's images in the validation split, and again in the test split; a
    file's split is decided by a hash of its path and ``seed`` alone (`pipeline.data.sources`).
    ``demo_train_views`` / ``demo_eval_views``: crops of the demo's training photos, and of its validation photos
    and again of its test photos (no photo is in two splits).
    """

    dataset: Literal["demo", "imagenet", "folder"] = "demo"
    root: str | None = None
    train_limit: Int | None = None
    val_limit: Int | None = None
    test_limit: Int | None = None
    demo_train_views: Int = Field(default=384, ge=1)
    demo_eval_views: Int = Field(default=32, ge=1)
    num_workers: Int = 0
    seed: Int = 0
    holdout: Float = Field(default=0.1, gt=0, le=0.5, description="share of a plain folder in validation, and in test")
    decode: Literal["auto", "cpu", "gpu"] = "auto"
    index_lists: Literal["project", "reference"] = "project"

    @model_validator(mode="after")
    def _root_given(self) -> DataConfig:
        if self.dataset != "demo" and not self.root:
            raise UserError(
                f"data.root is required for data.dataset = {self.dataset!r}; "
                "set it with --set data.root=/path/to/images or use data.dataset=demo"
            )
        return self


@dataclass(config=STRICT)
class LossConfig:
    """Paper eq. 4: ``λ1·CE + λ2·area + λ3·variation`` with ``λ3 = 1 − λ1 − λ2``.

    ``lambda3`` left empty is the paper's ``1 − λ1 − λ2``; a number is a free weight (the authors' published
    runs do not always sum to 1). ``variation`` is the smoothness term's form: ``paper`` (eq. 3, a per-element
    mean) or ``reference`` (the authors' code: a sum over maps and pixels of ``|difference|^variation_power``
    plus ``border_penalty`` times the edge values, over ``variation_power × batch``). ``class_subset`` is S:
    ``paper`` (the batch's distinct predictions topped up with random classes to ``lambda_rand``) or
    ``reference`` (the batch's predictions, duplicates included, as the authors' code).
    """

    lambda1: Float = Field(default=0.5, ge=0, le=1)
    lambda2: Float = Field(default=0.4, ge=0, le=1)
    lambda3: Float | None = Field(default=None, ge=0, description="or null for 1 - lambda1 - lambda2")
    lambda_area: Float = Field(default=1.0, gt=0, description="paper: 0.5, 1 or 2")
    lambda_rand: Int | None = Field(default=None, ge=1, description="or null for the batch size")
    area_epsilon: Float = 0.0005
    variation: Literal["paper", "reference"] = "paper"
    border_penalty: Float = Field(default=REFERENCE_BORDER_PENALTY, ge=0, description="the authors' code: 0.3")
    variation_power: Float = Field(default=REFERENCE_VARIATION_POWER, gt=0, description="the authors' code: 2")
    class_subset: Literal["paper", "reference"] = "paper"

    @property
    def variation_weight(self) -> float:
        """λ3: the given ``lambda3``, else ``1 − λ1 − λ2``."""
        return 1.0 - self.lambda1 - self.lambda2 if self.lambda3 is None else self.lambda3

    def describe(self) -> str:
        """The loss form in one line, e.g. ``variation=reference (border 0.3, power 2), S=paper``."""
        form = f"variation={self.variation}"
        if self.variation == "reference":
            form += f" (border {self.border_penalty:g}, power {self.variation_power:g})"
        return f"{form}, S={self.class_subset}"

    @model_validator(mode="after")
    def _consistent(self) -> LossConfig:
        if self.lambda3 is None and self.lambda1 + self.lambda2 > 1.0 + CONSTRAINT_ROUND_OFF:
            raise UserError(
                f"loss.lambda1 + loss.lambda2 = {self.lambda1 + self.lambda2:g} > 1, so "
                "lambda3 = 1 - lambda1 - lambda2 would be negative; lower one of them (or give loss.lambda3)"
            )
        if self.lambda_rand is not None and self.class_subset == "reference":
            raise UserError(
                f"loss.lambda_rand = {self.lambda_rand} has no effect with loss.class_subset = "
                "'reference' (S is the batch's predictions); drop it or use loss.class_subset = 'paper'"
            )
        # The border penalty and power belong to the reference form; the paper's eq. 3 has neither.
        reference_defaults = (
            ("border_penalty", REFERENCE_BORDER_PENALTY),
            ("variation_power", REFERENCE_VARIATION_POWER),
        )
        for key, default in reference_defaults:
            if self.variation == "paper" and getattr(self, key) != default:
                raise UserError(
                    f"loss.{key} = {getattr(self, key):g} only acts with loss.variation = 'reference' (the "
                    f"paper's eq. 3 has no such term); set loss.variation=reference or drop loss.{key}"
                )
        return self


@dataclass(config=STRICT)
class TrainConfig:
    """One-epoch AdamW + OneCycleLR training of the head.

    ``compile`` runs the frozen classifier under ``torch.compile`` (``auto``: on CUDA only).
    """

    batch_size: Int = Field(default=64, ge=1)
    epochs: Int = Field(default=1, ge=1)
    max_lr: Float = Field(default=1e-4, gt=0)
    weight_decay: Float = 0.01
    seed: Int = 12345
    device: str = "auto"
    max_loss: Float = 1e4
    compile: Bool | Literal["auto"] = "auto"


@dataclass(config=STRICT)
class EvalConfig:
    """ROAD and AD/IC settings, and how many training images make a class's map count as trained.

    ``imputer`` fills ROAD's removed pixels: "noisy_linear" (the ROAD paper's, with Gaussian ``noise``)
    or "telea" (OpenCV inpainting, the P-TAME paper's Table 1; ``noise`` does not apply)."""

    percentages: list[Annotated[Int, Field(gt=0, lt=100)]] = Field(
        default_factory=lambda: [10, 20, 30, 40, 50, 70, 90],
        min_length=1,
        description="removal percentages strictly between 0 and 100, e.g. [10, 20, 30, 40, 50, 70, 90]",
    )
    imputer: Imputer = "noisy_linear"
    noise: Float = 0.01
    batch_size: Int = Field(default=32, ge=1)
    seed: Int = 0
    min_class_count: Int = Field(default=DEFAULT_MIN_COUNT, ge=1)


EARLY_STOP_AT = (50, 75)  # checkpoints of a search with early stopping when checkpoints.at is left out


@dataclass(config=STRICT)
class CheckpointConfig:
    """Scores during a search trial's training, and stopping trials that are already beaten.

    At each percentage ``at`` of the training steps the head's ROAD MoRF/LeRF AUCs are measured on the first
    ``images`` validation images (the same images and imputation noise for every trial; the head is not changed).
    With ``early_stop`` a trial stops there when at least ``dominating`` completed trials scored better on every
    objective at the same checkpoint by more than the subset's noise (`pipeline.hpo.ax_study.early_stopping`).
    Searches only.
    Left out, ``at`` is EARLY_STOP_AT with early stopping and none without: checkpoint scores cost ROAD passes
    and nothing else reads them, so a trial pays for them only when stopping uses them or ``at`` asks for the curves.
    """

    at: list[Annotated[Int, Field(gt=0, lt=100)]] | None = Field(
        default=None,
        description="percentages of training strictly between 0 and 100, increasing; [] turns checkpoints off; "
        "left out: [50, 75] with early_stop, none without",
    )
    images: Int = Field(default=256, ge=1, description="the first validation images, scored at every checkpoint")
    early_stop: Bool = False
    dominating: Int = Field(default=2, ge=1, description="completed trials that must beat a trial to stop it")

    @property
    def percentages(self) -> list[int]:
        """The percentages of training at which checkpoints score: ``at``, or its default."""
        if self.at is not None:
            return list(self.at)
        return list(EARLY_STOP_AT) if self.early_stop else []

    @model_validator(mode="after")
    def _increasing(self) -> CheckpointConfig:
        at = self.percentages
        if any(later <= earlier for earlier, later in zip(at, at[1:])):
            raise UserError(f"checkpoints.at = {at}: give distinct percentages in increasing order, e.g. [50, 75]")
        if self.early_stop and not at:
            raise UserError(
                "checkpoints.early_stop = true needs checkpoints to stop at; set checkpoints.at, "
                "e.g. [50, 75], or leave it out"
            )
        return self


@dataclass(config=STRICT)
class CAStreamConfig:
    """Training of a CA-Stream (`pipeline.castream`) on the frozen backbone; batch size, seed and device come from
    ``train``.

    ``target``: ``labels`` (the dataset's labels; ImageNet's are the backbone's classes), ``prediction``
    (distillation for data without such labels) or ``auto`` (labels on ImageNet, else prediction). The prediction
    target is the frozen network's softmax moved a share ``top1_weight`` toward its top-1 (1: its top-1 alone).
    Its softmax alone (0) would not train: the stream starts as the network, where that loss has its minimum
    and a zero gradient. ``train_last_projection``: the paper trains the projection after the last stage too; off,
    it stays the identity and the classifier reads the attention-pooled features as they are (then Grad-CAM computed
    on the stream model is exactly Grad-CAM on GAP; Grad-CAM++ and Score-CAM change). ``points``/``pool``:
    the attachment points (module names, before the last stage) and the global pooling module; null for the
    backbone's preset. On the demo's validation views every candidate setting agreed with the network on every view
    (tests/benchmarks/castream_settings.py), so validation could not choose among them and the defaults were kept
    (they had been chosen on the earlier demo's test views); docs/evaluation.md.
    """

    epochs: Int = Field(default=1, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: Float = Field(default=1e-4, gt=0)
    weight_decay: Float = Field(default=1e-4, ge=0)
    momentum: Float = Field(default=0.9, ge=0, lt=1, description="SGD only")
    target: Literal["auto", "labels", "prediction"] = "auto"
    top1_weight: Float = Field(
        default=0.1, gt=0, le=1, description="prediction target: softmax moved this share to the top-1"
    )
    train_last_projection: Bool = False
    points: list[str] | None = Field(default=None, description="module names, or null for the backbone's preset")
    pool: str | None = Field(default=None, description="the global pooling module, or null for the backbone's preset")


@dataclass(config=STRICT)
class ExperimentConfig:
    """A complete, reproducible description of one head training run."""

    name: str = "experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    castream: CAStreamConfig = field(default_factory=CAStreamConfig)
