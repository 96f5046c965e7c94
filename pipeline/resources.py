"""The experiment and search-space YAML files shipped inside the package (``pipeline/experiments/``,
``pipeline/search_spaces/``; a clone links ``experiments/`` and ``search_spaces/`` to them), so the documented
paths work from any directory and in any install."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import UserError

PACKAGE = Path(__file__).resolve().parent
EXPERIMENTS = PACKAGE / "experiments"  # the demo and the paper's setups, experiments/<backbone>.yaml
SEARCH_SPACES = PACKAGE / "search_spaces"
DATALISTS = PACKAGE / "datalists"  # ImageNet's fixed validation and test lists
DEFAULT_SEARCH_SPACE = SEARCH_SPACES / "ptame.yaml"  # the paper's space


def packaged_names(folder: Path) -> list[str]:
    """The files in ``folder`` by the names a command accepts: ``demo``, ``paper/tab1_vgg16``, ..."""
    return sorted(path.relative_to(folder).with_suffix("").as_posix() for path in folder.rglob("*.yaml"))


def _resolve(path: str | Path, folder: Path, kind: str) -> Path:
    """``path`` when it is a file; else the packaged file it names: ``experiments/demo.yaml``, ``demo.yaml`` and
    ``demo`` all name ``pipeline/experiments/demo.yaml``."""
    given = Path(path).expanduser()
    if given.is_file():
        return given
    if not given.is_absolute():
        name = Path(*given.parts[1:]) if given.parts[:1] == (folder.name,) else given
        for candidate in (folder / name, folder / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    raise UserError(
        f"{kind} file {str(path)!r} does not exist, nor is it a packaged {kind}; give a YAML file "
        f"or one of: {', '.join(packaged_names(folder))}"
    )


def experiment_file(path: str | Path) -> Path:
    """An experiment YAML: a path, or a packaged experiment (``experiments/demo.yaml``, ``demo``)."""
    return _resolve(path, EXPERIMENTS, "experiment")


def search_space_file(path: str | Path) -> Path:
    """A search-space YAML: a path, or a packaged space (``search_spaces/reference.yaml``, ``reference``)."""
    return _resolve(path, SEARCH_SPACES, "search space")
