"""Docs that cannot rot: every command shown in the README and the docs parses with the project's own argument
parsers, and the README's Python example runs as written."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"(?:\.venv/bin/)?python -m (pipeline\.\w+)((?:[^`|\n\\]|\\\n)*)")
# An argparse error that means the command as shown would not run: a flag or choice that does not exist.
WRONG = (
    "unrecognized arguments",
    "invalid choice",
    "ambiguous option",
    "expected one argument",
    "the following arguments are required",
    "one of the arguments",
    "not allowed with argument",
)


class Parsed(Exception):
    """Raised in place of running a command once its arguments parsed."""


def shown_commands(text: str) -> list[tuple[str, str]]:
    """(module, arguments) of every ``python -m pipeline.<verb> ...`` in code blocks and inline code."""
    found = []
    for module, arguments in COMMAND.findall(text):
        arguments = arguments.replace("\\\n", " ").split("#")[0]
        found.append((module, " ".join(arguments.split())))
    return found


def parse(module: str, arguments: str, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Parse ``arguments`` with the command's own parser (its ``main`` stops once they parsed); the argparse error
    for a flag or choice that does not exist, else None."""
    errors: list[str] = []
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(parser, args=None, namespace=None):
        original(parser, args, namespace)
        raise Parsed

    def error(parser, message):
        errors.append(message)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    monkeypatch.setattr(argparse.ArgumentParser, "error", error)
    command = importlib.import_module(module)
    try:
        command.main(shlex.split(arguments))
    except Parsed:
        pass
    wrong = [message for message in errors if message.startswith(WRONG)]
    return wrong[0] if wrong else None


def test_every_page_shows_commands_and_every_command_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = 0
    for page in PAGES:
        for module, arguments in shown_commands(page.read_text()):
            problem = parse(module, arguments, monkeypatch)
            assert problem is None, f"{page.name}: python -m {module} {arguments}: {problem}"
            checked += 1
    assert checked >= 30, checked  # the README's table and the docs' examples


def test_a_misspelt_flag_in_a_page_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text()
    shown = "`python -m pipeline.evaluate --head runs/head --split test --out evaluation.json`"
    assert shown in readme
    ((module, arguments),) = shown_commands(shown.replace("--out", "--ouut"))
    assert "unrecognized arguments: --ouut" in parse(module, arguments, monkeypatch)
    ((module, arguments),) = shown_commands(shown.replace("--split", "--splt"))
    assert "one of the arguments --split --images is required" in parse(module, arguments, monkeypatch)


def test_the_readme_python_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from pipeline import cli
    from pipeline.train import main as train_main
    from tests.toy_models import toy_experiment, write_images

    example = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL).group(1)
    head = re.search(r'load_explainer\("([^"]+)"\)', example).group(1)
    monkeypatch.chdir(tmp_path)
    experiment = toy_experiment(tmp_path, write_images(tmp_path / "images"))
    with pytest.raises(SystemExit) as stop:
        cli.run(train_main, ["--experiment", str(experiment), "--out", head, "--no-progress"])
    assert stop.value.code == 0
    Image.new("RGB", (64, 48), (180, 40, 40)).save("photo.jpg")
    exec(compile(example, "README.md", "exec"), {})
    assert Image.open("photo_map.png").size[0] == 32  # the toy backbone's input size
