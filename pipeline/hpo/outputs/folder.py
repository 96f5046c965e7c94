"""A search's folder, ``--out/NAME``: everything a search keeps on disk, and the one place that knows the layout.

base_config.yaml     the experiment it was started with (a rerun must pass the same)
search_space.yaml    a copy of its search space
ax_experiment.json   Ax's snapshot (`pipeline.hpo.ax_study.study`)
state.json           the rest: the MLflow parent run, the reference maps' scores, the final head's trial
splits.json          what each split holds (`pipeline.data.manifest`); a resume on changed data is refused
trials/NNN/          each trial's plots
final/               the final head (``head.pt``, ``config.yaml``, ``splits.json``, ...), best.yaml, metrics.json
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from pipeline import config as configs
from pipeline.atomic import write_text_atomically
from pipeline.config import ExperimentConfig
from pipeline.errors import UserError
from pipeline.hpo.ax_study.space import SearchSpace, load_search_space

DEFAULT_ROOT = Path("runs/search")  # --out of every command that names a search
BASE_CONFIG, SPACE, STATE = "base_config.yaml", "search_space.yaml", "state.json"
BEST, METRICS = "best.yaml", "metrics.json"
# state.json keys
PARENT_RUN, REFERENCES, FINAL_TRIAL, MODEL_VERSION = "parent_run_id", "reference_maps", "final_trial", "model_version"


def search_name(base: ExperimentConfig, space: SearchSpace) -> str:
    """A stable default name, so rerunning the same command resumes the same search."""
    raw = f"{base.name}-{base.model.backbone}-{base.model.auxiliary}-{space.name}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", raw)


def check_search_name(name: str) -> None:
    """A search name is a folder name under ``--out``, never a path: no separator, not empty, ``.`` or ``..``."""
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise UserError(
            f"--name {name!r} is not a search name: give a plain name without '/' or '\\' "
            "(the search lives in --out/NAME; choose the folder with --out)"
        )


class SearchFolder:
    """One search's folder; `state` is read once and rewritten atomically on every `update_state`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._state: dict[str, Any] | None = None

    @classmethod
    def find(cls, search: str | Path, root: Path = DEFAULT_ROOT) -> SearchFolder:
        """The folder of an existing search: ``search`` as a folder, else as a name under ``root``."""
        for directory in (Path(search), root / search):
            if (directory / BASE_CONFIG).is_file():
                return cls(directory)
        raise UserError(
            f"no search {str(search)!r}: neither {search} nor {root / search} holds one; give the --name "
            "of a search run from this folder (and --root if it used another --out), or its folder"
        )

    def start(self, name: str, base: dict[str, Any], space_path: Path) -> None:
        """Create the folder for a new search, or check that a resumed one was started with the same config."""
        self.directory.mkdir(parents=True, exist_ok=True)
        base_path = self.directory / BASE_CONFIG
        if base_path.is_file() and configs.read_yaml(base_path) != base:
            raise UserError(
                f"search {name!r} was started with another experiment config ({base_path}); rerun "
                "with the same options or choose a new --name"
            )
        base_path.write_text(yaml.safe_dump(base, sort_keys=False))
        shutil.copyfile(space_path, self.directory / SPACE)

    def base(self) -> dict[str, Any]:
        """The experiment dict the search was started with."""
        return configs.read_yaml(self.directory / BASE_CONFIG)

    def space(self) -> SearchSpace:
        return load_search_space(self.directory / SPACE)

    @property
    def state(self) -> dict[str, Any]:
        if self._state is None:
            path = self.directory / STATE
            self._state = json.loads(path.read_text()) if path.is_file() else {}
        return self._state

    def update_state(self, **values: Any) -> None:
        self.state.update(values)
        write_text_atomically(self.directory / STATE, json.dumps(self.state, indent=2))

    def trial(self, index: int) -> Path:
        """The folder of trial ``index`` (created)."""
        folder = self.directory / "trials" / f"{index:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @property
    def final(self) -> Path:
        """The final head's folder."""
        return self.directory / "final"

    @property
    def best(self) -> Path:
        """The chosen trial's complete experiment YAML."""
        return self.directory / BEST

    @property
    def metrics(self) -> Path:
        """The chosen trial's validation and test scores, JSON."""
        return self.directory / METRICS

    @property
    def analyses(self) -> Path:
        """Ax's HTML analyses."""
        return self.directory / "ax"
