"""Typed experiment configs: YAML load, `--set key=value` overrides, validation, YAML dump.

The configs are pydantic dataclasses (``dataclasses.asdict`` and ``replace`` work on them): pydantic checks
every key, type, choice and bound, and `user_error` turns its report into one line that names the offending
key (``loss.lambda1``) and says how to fix it. Rules that tie keys together raise `UserError` themselves.

Three rooms: `sections` (the dataclasses and their constants), `validation` (to and from plain dicts, checked)
and `files` (YAML and command-line text). Import from ``pipeline.config``: these are its names.
"""

from pipeline.config.files import apply_overrides, dump, load, parse_override, read_yaml, with_values
from pipeline.config.sections import (
    DEFAULT_MIN_COUNT,
    DEVICE_HELP,
    EARLY_STOP_AT,
    REFERENCE_BORDER_PENALTY,
    REFERENCE_VARIATION_POWER,
    STRICT,
    Bool,
    CAStreamConfig,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    Float,
    Imputer,
    Int,
    LossConfig,
    ModelConfig,
    TrainConfig,
)
from pipeline.config.validation import from_dict, to_dict, user_error, validate

__all__ = [
    "DEFAULT_MIN_COUNT",
    "DEVICE_HELP",
    "EARLY_STOP_AT",
    "REFERENCE_BORDER_PENALTY",
    "REFERENCE_VARIATION_POWER",
    "STRICT",
    "Bool",
    "CAStreamConfig",
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "Float",
    "Imputer",
    "Int",
    "LossConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "dump",
    "from_dict",
    "load",
    "parse_override",
    "read_yaml",
    "to_dict",
    "user_error",
    "validate",
    "with_values",
]
