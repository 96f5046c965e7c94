"""Configs as files and command-line text: YAML read and dump, ``--set key=value`` overrides, typed values."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.sections import ExperimentConfig
from pipeline.config.validation import from_dict, to_dict
from pipeline.errors import UserError


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


def dump(config: ExperimentConfig, path: str | Path, header: str | None = None) -> Path:
    """Write the fully resolved config, under ``header`` as comment lines; ``load(path)`` gives back an equal
    config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    comments = "".join(f"# {line}\n" for line in header.splitlines()) if header else ""
    path.write_text(comments + yaml.safe_dump(to_dict(config), sort_keys=False))
    return path
