"""A config to and from plain nested dicts, checked: pydantic's report on a bad value becomes one `UserError` line
that names the offending key (``loss.lambda1``) and says how to fix it."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import TypeAdapter, ValidationError

from pipeline.config.sections import ExperimentConfig
from pipeline.errors import UserError


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


def to_dict(config: ExperimentConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
