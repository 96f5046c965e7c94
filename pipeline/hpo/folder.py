"""A search's folder under ``--out``: the base config and search space it started with, its state, trials and
final head."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import ExperimentConfig
from pipeline.errors import UserError
from pipeline.hpo.space import SearchSpace

BASE_CONFIG, SPACE, STATE = "base_config.yaml", "search_space.yaml", "state.json"


BEST, METRICS = "best.yaml", "metrics.json"


REFERENCES = "reference_maps"  # state key: ROAD of trivial maps on the validation split


def search_name(base: ExperimentConfig, space: SearchSpace) -> str:
    """A stable default name, so rerunning the same command resumes the same search."""
    raw = f"{base.name}-{base.model.backbone}-{base.model.auxiliary}-{space.name}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", raw)


def check_search_name(name: str) -> None:
    """A search name is a folder name under ``--out``, never a path: no separator, not empty, ``.`` or ``..``."""
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise UserError(f"--name {name!r} is not a search name: give a plain name without '/' or '\\' "
                        "(the search lives in --out/NAME; choose the folder with --out)")


@dataclass
class SearchState:
    """What the search keeps besides Ax's snapshot: the MLflow parent run and the final head's status."""

    path: Path
    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "SearchState":
        return cls(path, json.loads(path.read_text()) if path.is_file() else {})

    def set(self, **values: Any) -> None:
        self.values.update(values)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.values, indent=2))
        temporary.replace(self.path)
