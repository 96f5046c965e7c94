"""Typed experiment configs: YAML load, `--set key=value` overrides, validation, YAML dump.

The configs are pydantic dataclasses (``dataclasses.asdict`` and ``replace`` work on them): pydantic checks
every key, type, choice and bound, and `user_error` turns its report into one line that names the offending
key (``loss.lambda1``) and says how to fix it. Rules that tie keys together raise `UserError` themselves.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, Strict, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from pipeline.errors import UserError

# The authors' code's defaults for its variation term (configs/model/loss/classic.yaml).
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
        if self.lambda3 is None and self.lambda1 + self.lambda2 > 1.0 + 1e-6:  # tolerate optimiser round-off
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


def _fields(tp: Any) -> dict[str, Any]:
    """A pydantic dataclass's fields (name -> FieldInfo); {} for any other type."""
    return getattr(tp, "__pydantic_fields__", None) or {}


def _bare(tp: Any) -> Any:
    """``X`` for ``Annotated[X, ...]`` and for ``X | None``."""
    while typing.get_origin(tp) is Annotated or (type(None) in typing.get_args(tp) and len(typing.get_args(tp)) == 2):
        tp = next(arg for arg in typing.get_args(tp) if arg is not type(None))
    return tp


def _type_name(tp: Any) -> str:
    tp = _bare(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " or ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(map(_type_name, args)))
    if origin in (list, tuple):
        return "a list"
    return "a mapping" if origin is dict or _fields(tp) else getattr(tp, "__name__", str(tp))


def _locate(root: type, loc: tuple[Any, ...]) -> tuple[str, Any, Any]:
    """Follow pydantic's error location through the types: (dotted key, its bare type, its FieldInfo or None).

    Stops at the first step that names no field, list item or mapping entry: an unknown key, or the
    branch label pydantic adds inside a union such as ``bool | Literal["auto"]``.
    """
    key, tp, info = "", _bare(root), None
    for position, item in enumerate(loc):
        fields, origin, args = _fields(tp), typing.get_origin(tp), typing.get_args(tp)
        if item in fields:
            key, info, tp = f"{key}.{item}".lstrip("."), fields[item], fields[item].annotation
        elif origin is dict and loc[position + 1 :] == ("[key]",):  # the mapping's key itself is bad
            return key, _bare(args[0]), info
        elif origin is dict or (isinstance(item, int) and origin in (list, tuple)):
            key, tp = (f"{key}.{item}", args[1]) if origin is dict else (f"{key}[{item}]", args[0])
        elif member := next(
            (m for m in args if any(item in typing.get_args(f.annotation) for f in _fields(m).values())), None
        ):
            tp = member  # a tagged union's member, labelled by its Literal tag
        else:
            break
        tp = _bare(tp)
    return key, tp, info


_RELATIONS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def user_error(error: ValidationError, root: type, prefix: str = "") -> UserError:
    """Pydantic's first complaint about values for ``root`` as one line that names the dotted key, e.g.
    ``loss.lambda1 = 1.5 is outside [0, 1]; ...``. A field's ``description`` is the hint after a bound."""
    first = error.errors()[0]
    kind, value, context = first["type"], first["input"], first.get("ctx", {})
    key, tp, info = _locate(root, first["loc"])
    note = f" ({info.description})" if info is not None and info.description else ""
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        unknown = f"{key}.{first['loc'][-1]}".lstrip(".")
        message = f"unknown key '{unknown}'; valid keys here: {', '.join(sorted(_fields(tp)))}"
    elif kind in _RELATIONS:
        low, high = (
            next((getattr(m, name) for m in getattr(info, "metadata", ()) if hasattr(m, name)), None)
            for name in ("ge", "le")
        )
        if low is not None and high is not None:
            message = f"{key} = {value} is outside [{low:g}, {high:g}]; choose a value in [{low:g}, {high:g}]"
        elif context == {"gt": 0}:
            message = f"{key} = {value} must be positive{note}"
        else:
            message = f"{key} = {value} must be {_RELATIONS[kind]} {next(iter(context.values())):g}{note}"
    elif kind == "value_error":
        message = f"{key}: {context['error']}"
    elif kind == "finite_number":
        message = f"{key}: expected a finite number, got {value!r}"
    elif kind == "missing":
        message = f"{key}: missing; this key is required"
    elif kind in ("too_short", "string_too_short"):
        wanted = "a non-empty value" if context["min_length"] == 1 else f"at least {context['min_length']} items"
        message = f"{key}: expected {wanted}, got {value!r}{note}"
    elif kind.startswith("union_tag"):  # a tagged union's tag (``type: range``) is missing or unknown
        label = context["discriminator"].strip("'")
        tags = [tag for member in typing.get_args(tp) for tag in typing.get_args(_fields(member)[label].annotation)]
        message = f"{key}.{label}: {context.get('tag')!r} is not one of {', '.join(map(repr, tags))}"
    elif typing.get_origin(tp) is Literal:
        message = f"{key}: {value!r} is not one of {', '.join(map(repr, typing.get_args(tp)))}"
    else:
        message = f"{key}: expected {_type_name(tp)}, got {value!r}"
    return UserError(prefix + message)


_EXPERIMENT = TypeAdapter(ExperimentConfig)


def from_dict(values: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate a config from plain nested dicts."""
    if not isinstance(values, Mapping):
        raise UserError(f"a config must be a YAML mapping at the top level, got {type(values).__name__}")
    try:
        return _EXPERIMENT.validate_python(dict(values))
    except ValidationError as error:
        raise user_error(error, ExperimentConfig) from None


def validate(config: ExperimentConfig) -> ExperimentConfig:
    """Check a config built in code (e.g. with `dataclasses.replace`) as a loaded one is checked."""
    return from_dict(to_dict(config))


class _Loader(yaml.SafeLoader):
    """PyYAML's YAML 1.1, plus YAML 1.2's floats without a dot (``1e-4``, as ``repr`` writes small floats),
    which YAML 1.1 reads as strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning I/O and syntax errors into one clear message."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist; pass an existing YAML file")
    try:
        values = yaml.load(path.read_text(), Loader=_Loader) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path} is not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} must contain a YAML mapping at the top level")
    return values


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"loss.lambda1=0.3"`` -> (["loss", "lambda1"], 0.3); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. --set loss.lambda1=0.3")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to nested dicts (a copy); unknown keys are caught by ``from_dict``."""
    merged = copy.deepcopy(values)
    for text in overrides:
        path, value = parse_override(text)
        _set(merged, path, value, f"--set {text!r}")
    return merged


def with_values(values: dict[str, Any], parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dicts (a copy) with dotted keys set to typed values, e.g. ``{"loss.lambda1": 0.3}``: no text on the
    way, so a float arrives bit for bit; unknown keys are caught by ``from_dict``."""
    merged = copy.deepcopy(values)
    for key, value in parameters.items():
        _set(merged, key.split("."), value, repr(key))
    return merged


def _set(values: dict[str, Any], path: Sequence[str], value: Any, where: str) -> None:
    node = values
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"{where}: '{part}' is not a section")
        node = child
    node[path[-1]] = value


def load(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load a config file (or the defaults) and apply ``--set`` overrides."""
    values = read_yaml(path) if path is not None else {}
    return from_dict(apply_overrides(values, overrides))


def to_dict(config: ExperimentConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump(config: ExperimentConfig, path: str | Path, header: str | None = None) -> Path:
    """Write the fully resolved config, under ``header`` as comment lines; ``load(path)`` gives back an equal
    config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    comments = "".join(f"# {line}\n" for line in header.splitlines()) if header else ""
    path.write_text(comments + yaml.safe_dump(to_dict(config), sort_keys=False))
    return path
