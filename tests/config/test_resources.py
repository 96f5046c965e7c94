"""The packaged experiments and search spaces: found by their documented paths from any directory, a user's own
file of the same path wins, and (system test) they ship in the wheel and work from an installed copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.resources import EXPERIMENTS, SEARCH_SPACES, experiment_file, packaged_names, search_space_file

REPO = Path(__file__).resolve().parents[2]


def test_the_clones_folders_are_links_to_the_packaged_files():
    assert (REPO / "experiments").resolve() == EXPERIMENTS and (REPO / "search_spaces").resolve() == SEARCH_SPACES
    assert {"demo", "vgg16", "paper/tab1_vgg16"} <= set(packaged_names(EXPERIMENTS))
    assert packaged_names(SEARCH_SPACES) == ["ptame", "reference"]


@pytest.mark.parametrize(
    "given, packaged",
    [
        ("experiments/demo.yaml", "demo.yaml"),
        ("demo", "demo.yaml"),
        ("demo.yaml", "demo.yaml"),
        ("experiments/paper/tab1_vgg16.yaml", "paper/tab1_vgg16.yaml"),
        ("paper/tab1_vgg16", "paper/tab1_vgg16.yaml"),
    ],
)
def test_documented_experiment_paths_work_from_any_directory(tmp_path, monkeypatch, given, packaged):
    monkeypatch.chdir(tmp_path)
    assert experiment_file(given) == EXPERIMENTS / packaged


def test_search_spaces_by_path_or_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert search_space_file("search_spaces/reference.yaml") == SEARCH_SPACES / "reference.yaml"
    assert search_space_file("ptame") == SEARCH_SPACES / "ptame.yaml"


def test_a_users_own_file_wins_over_the_packaged_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "demo.yaml").write_text("name: mine\n")
    assert experiment_file("experiments/demo.yaml") == Path("experiments/demo.yaml")


def test_a_missing_file_lists_the_packaged_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"experiment file 'experiments/dmeo.yaml' does not exist.*demo, paper/"):
        experiment_file("experiments/dmeo.yaml")
    with pytest.raises(UserError, match="search space file 'nope' does not exist.*: ptame, reference$"):
        search_space_file("nope")


@pytest.mark.system
def test_an_installed_wheel_runs_from_an_empty_directory(tmp_path):
    """Build the wheel from a copy of the sources, install it without dependencies into a target folder (the
    dependencies come from this interpreter) and use the packaged files from a directory with nothing in it."""
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copy(REPO / "README.md", source)
    shutil.copytree(REPO / "pipeline", source / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(pip + ["wheel", "--no-deps", "-w", str(tmp_path / "wheel"), str(source)], check=True, timeout=600)
    [wheel] = (tmp_path / "wheel").glob("*.whl")
    site = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=600)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"PYTHONPATH": str(site)}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *argv], cwd=empty, env=env, capture_output=True, text=True, timeout=300)

    resolved = run(
        "-c",
        "import pipeline.search as s; from pipeline import config as c, resources as r; "
        "from pipeline.hpo.ax_study.space import load_search_space as load\n"
        "print(s.__file__)\n"
        "print(load(r.search_space_file(r.DEFAULT_SEARCH_SPACE)).name)\n"
        "print(load(r.search_space_file('search_spaces/reference.yaml')).name)\n"
        "print(c.load(r.experiment_file('experiments/demo.yaml')).model.backbone)\n"
        "print(c.load(r.experiment_file('experiments/paper/tab1_vgg16.yaml')).model.backbone)\n",
    )
    assert resolved.returncode == 0, resolved.stderr
    where, *names = resolved.stdout.split()
    assert where.startswith(str(site)) and names == ["ptame", "reference", "efficientnet_lite0", "vgg16"]
    help_text = run("-m", "pipeline.search", "--help")
    assert help_text.returncode == 0 and "packaged" in help_text.stdout, help_text.stderr
    missing = run("-m", "pipeline.train", "--experiment", "experiments/nope.yaml")
    assert missing.returncode == 2 and missing.stderr.startswith("error: experiment file 'experiments/nope.yaml'")
    assert list(empty.iterdir()) == []
