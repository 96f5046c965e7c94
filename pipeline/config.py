"""Typed experiment configs: YAML load, `--set key=value` overrides, validation, YAML dump.

Every error names the offending key (``loss.lambda1``) and says how to fix it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from pipeline.errors import UserError
from pipeline.models.coverage import DEFAULT_MIN_COUNT

# The authors' code's defaults for its variation term (configs/model/loss/classic.yaml).
REFERENCE_BORDER_PENALTY = 0.3
REFERENCE_VARIATION_POWER = 2.0


@dataclass
class ModelConfig:
    """The classifier being explained and the frozen auxiliary CNN that feeds the head."""

    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    auxiliary: str = "resnet18"
    auxiliary_layers: list[str] | None = None
    auxiliary_weights: str | None = None
    masking: Literal["pixel", "normalized"] = "pixel"


@dataclass
class DataConfig:
    """Where images come from. ``demo`` needs nothing; ``imagenet``/``folder`` need ``root``.

    ``decode`` chooses where training views of image files are decoded and augmented: ``cpu`` (PIL in the
    loader workers), ``gpu`` (workers read bytes, the GPU decodes), ``auto`` (the GPU when training on CUDA).
    ``index_lists`` picks ImageNet's 2000-image validation and test lists: this project's or the authors'.
    """

    dataset: Literal["demo", "imagenet", "folder"] = "demo"
    root: str | None = None
    train_limit: int | None = None
    val_limit: int | None = None
    test_limit: int | None = None
    demo_train_views: int = 384
    demo_eval_views: int = 48
    num_workers: int = 0
    seed: int = 0
    decode: Literal["auto", "cpu", "gpu"] = "auto"
    index_lists: Literal["project", "reference"] = "project"


@dataclass
class LossConfig:
    """Paper eq. 4: ``λ1·CE + λ2·area + λ3·variation`` with ``λ3 = 1 − λ1 − λ2``.

    ``lambda3`` left empty is the paper's ``1 − λ1 − λ2``; a number is a free weight (the authors' published
    runs do not always sum to 1). ``variation`` is the smoothness term's form: ``paper`` (eq. 3, a per-element
    mean) or ``reference`` (the authors' code: a sum over maps and pixels of ``|difference|^variation_power``
    plus ``border_penalty`` times the edge values, over ``variation_power × batch``). ``class_subset`` is S:
    ``paper`` (the batch's distinct predictions topped up with random classes to ``lambda_rand``) or
    ``reference`` (the batch's predictions, duplicates included, as the authors' code).
    """

    lambda1: float = 0.5
    lambda2: float = 0.4
    lambda3: float | None = None
    lambda_area: float = 1.0
    lambda_rand: int | None = None
    area_epsilon: float = 0.0005
    variation: Literal["paper", "reference"] = "paper"
    border_penalty: float = REFERENCE_BORDER_PENALTY
    variation_power: float = REFERENCE_VARIATION_POWER
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


@dataclass
class TrainConfig:
    """One-epoch AdamW + OneCycleLR training of the head.

    ``compile`` runs the frozen classifier under ``torch.compile`` (``auto``: on CUDA only).
    """

    batch_size: int = 64
    epochs: int = 1
    max_lr: float = 1e-4
    weight_decay: float = 0.01
    seed: int = 12345
    device: str = "auto"
    max_loss: float = 1e4
    compile: bool | Literal["auto"] = "auto"


@dataclass
class EvalConfig:
    """ROAD and AD/IC settings, and how many training images make a class's map count as trained.

    ``imputer`` fills ROAD's removed pixels: "noisy_linear" (the ROAD paper's, with Gaussian ``noise``)
    or "telea" (OpenCV inpainting, the P-TAME paper's Table 1; ``noise`` does not apply)."""

    percentages: list[int] = field(default_factory=lambda: [10, 20, 30, 40, 50, 70, 90])
    imputer: Literal["noisy_linear", "telea"] = "noisy_linear"
    noise: float = 0.01
    batch_size: int = 32
    seed: int = 0
    min_class_count: int = DEFAULT_MIN_COUNT


@dataclass
class ExperimentConfig:
    """A complete, reproducible description of one head training run."""

    name: str = "experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(map(repr, typing.get_args(tp)))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        choices = [o for o in options if o is not type(None)]
        for option in choices:
            try:
                return _coerce(value, option, key)
            except UserError as error:
                errors.append(error)
        if len(choices) == 1:
            raise errors[0]
        raise UserError(f"{key}: expected {' or '.join(map(_type_name, choices))}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise UserError(f"{key}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"{key}: expected a list, got {value!r}")
        return [_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise UserError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key + ".")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise UserError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise UserError(
                f"unknown key '{prefix}{key}'; valid keys here: {', '.join(sorted(known))}"
            )
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in values.items()}
    return cls(**kwargs)


def validate(config: ExperimentConfig) -> ExperimentConfig:
    """Reject values that would make training meaningless or crash later."""
    loss = config.loss
    for name in ("lambda1", "lambda2"):
        value = getattr(loss, name)
        if not 0.0 <= value <= 1.0:
            raise UserError(f"loss.{name} = {value} is outside [0, 1]; choose a value in [0, 1]")
    if loss.lambda3 is None and loss.lambda1 + loss.lambda2 > 1.0 + 1e-6:  # tolerate optimiser round-off
        raise UserError(
            f"loss.lambda1 + loss.lambda2 = {loss.lambda1 + loss.lambda2:g} > 1, so "
            "lambda3 = 1 - lambda1 - lambda2 would be negative; lower one of them (or give loss.lambda3)"
        )
    if loss.lambda3 is not None and loss.lambda3 < 0:
        raise UserError(f"loss.lambda3 = {loss.lambda3} must be >= 0 (or null for 1 - lambda1 - lambda2)")
    _validate_variation(loss)
    if loss.lambda_area <= 0:
        raise UserError(f"loss.lambda_area = {loss.lambda_area} must be positive (paper: 0.5, 1 or 2)")
    if loss.lambda_rand is not None and loss.lambda_rand < 1:
        raise UserError(f"loss.lambda_rand = {loss.lambda_rand} must be >= 1 (or null for the batch size)")
    if loss.lambda_rand is not None and loss.class_subset == "reference":
        raise UserError(f"loss.lambda_rand = {loss.lambda_rand} has no effect with loss.class_subset = 'reference' "
                        "(S is the batch's predictions); drop it or use loss.class_subset = 'paper'")
    for key, value in (("train.batch_size", config.train.batch_size), ("train.epochs", config.train.epochs),
                       ("evaluation.batch_size", config.evaluation.batch_size),
                       ("evaluation.min_class_count", config.evaluation.min_class_count)):
        if value < 1:
            raise UserError(f"{key} = {value} must be >= 1")
    if config.train.max_lr <= 0:
        raise UserError(f"train.max_lr = {config.train.max_lr} must be positive")
    bad = [p for p in config.evaluation.percentages if not 0 < p < 100]
    if bad or not config.evaluation.percentages:
        raise UserError(
            f"evaluation.percentages = {config.evaluation.percentages}: give removal percentages strictly "
            "between 0 and 100, e.g. [10, 20, 30, 40, 50, 70, 90]"
        )
    if config.data.dataset != "demo" and not config.data.root:
        raise UserError(
            f"data.root is required for data.dataset = {config.data.dataset!r}; "
            "set it with --set data.root=/path/to/images or use data.dataset=demo"
        )
    return config


def _validate_variation(loss: LossConfig) -> None:
    """The border penalty and power belong to the reference form; the paper's eq. 3 has neither."""
    if loss.variation_power <= 0:
        raise UserError(f"loss.variation_power = {loss.variation_power} must be positive (the authors' code: 2)")
    if loss.border_penalty < 0:
        raise UserError(f"loss.border_penalty = {loss.border_penalty} must be >= 0 (the authors' code: 0.3)")
    if loss.variation == "paper":
        for key, value, default in (("border_penalty", loss.border_penalty, REFERENCE_BORDER_PENALTY),
                                    ("variation_power", loss.variation_power, REFERENCE_VARIATION_POWER)):
            if value != default:
                raise UserError(f"loss.{key} = {value:g} only acts with loss.variation = 'reference' (the paper's "
                                f"eq. 3 has no such term); set loss.variation=reference or drop loss.{key}")


def from_dict(values: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate a config from plain nested dicts."""
    if not isinstance(values, Mapping):
        raise UserError(f"a config must be a YAML mapping at the top level, got {type(values).__name__}")
    return validate(_build(ExperimentConfig, values))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning I/O and syntax errors into one clear message."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist; pass an existing YAML file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
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
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to nested dicts (a copy); unknown keys are caught by ``from_dict``."""
    merged = yaml.safe_load(yaml.safe_dump(values))
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {text!r}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return merged


def load(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load a config file (or the defaults) and apply ``--set`` overrides."""
    values = read_yaml(path) if path is not None else {}
    return from_dict(apply_overrides(values, overrides))


def to_dict(config: ExperimentConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump(config: ExperimentConfig, path: str | Path) -> Path:
    """Write the fully resolved config; ``load(path)`` gives back an equal config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    return path
