"""Config and search-space validation: one-line errors naming the key, and the packaged JSON Schema."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest

from pipeline import config as configs
from pipeline.errors import UserError
from pipeline.hpo.ax_study.space import load_search_space
from pipeline.resources import EXPERIMENTS
from pipeline.schema import SCHEMA_FILE
from pipeline.schema import main as schema_main

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT_FILES = sorted(EXPERIMENTS.rglob("*.yaml"))


def one_line_error(overrides: list[str]) -> str:
    with pytest.raises(UserError) as error:
        configs.load(None, overrides)
    message = str(error.value)
    assert "\n" not in message and "validation error" not in message, message
    return message


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.max_lr=fast", "train.max_lr: expected float, got 'fast'"),
        ("train.max_lr='1e-4'", "train.max_lr: expected float, got '1e-4'"),  # a quoted number is a string
        ("train.batch_size=2.5", "train.batch_size: expected int, got 2.5"),
        ("train.epochs=yes", "train.epochs: expected int, got True"),
        ("evaluation.percentages=[10, x]", "evaluation.percentages[1]: expected int, got 'x'"),
        ("loss=0.5", "loss: expected a mapping, got 0.5"),
    ],
)
def test_a_wrong_type_is_one_line_naming_the_key(override, expected):
    assert one_line_error([override]) == expected


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "loss.lamda1=0.3",
            "unknown key 'loss.lamda1'; valid keys here: area_epsilon, border_penalty, class_subset, "
            "lambda1, lambda2, lambda3, lambda_area, lambda_rand, variation, variation_power",
        ),
        (
            "trian.epochs=2",
            "unknown key 'trian'; valid keys here: castream, checkpoints, data, evaluation, loss, model, name, train",
        ),
    ],
)
def test_an_unknown_key_is_one_line_naming_it_and_the_known_ones(override, expected):
    assert one_line_error([override]) == expected


@pytest.mark.parametrize(
    "override, expected",
    [
        ("loss.lambda1=1.5", "loss.lambda1 = 1.5 is outside [0, 1]; choose a value in [0, 1]"),
        ("loss.lambda2=-0.25", "loss.lambda2 = -0.25 is outside [0, 1]; choose a value in [0, 1]"),
        ("loss.lambda_area=0", "loss.lambda_area = 0 must be positive (paper: 0.5, 1 or 2)"),
        ("loss.lambda_rand=0", "loss.lambda_rand = 0 must be >= 1 (or null for the batch size)"),
        ("train.batch_size=0", "train.batch_size = 0 must be >= 1"),
        (
            "evaluation.percentages=[10, 100]",
            "evaluation.percentages[1] = 100 must be < 100 (removal percentages "
            "strictly between 0 and 100, e.g. [10, 20, 30, 40, 50, 70, 90])",
        ),
    ],
)
def test_an_out_of_range_value_is_one_line_naming_the_key(override, expected):
    assert one_line_error([override]) == expected


def test_exponent_floats_without_a_dot_are_numbers():
    """YAML 1.1 reads ``1e-5`` as a string; ``repr`` writes small floats that way (trial overrides do)."""
    assert configs.load(None, ["train.max_lr=1e-5", f"train.weight_decay={3.2e-06!r}"]).train.max_lr == 1e-5
    assert configs.parse_override("name=1e5") == (["name"], 100000.0)
    assert configs.parse_override("train.device=cuda:0") == (["train", "device"], "cuda:0")


@pytest.mark.system
def test_config_imports_nothing_above_it():
    code = "import sys, pipeline.config; print(sorted(m for m in sys.modules if m.startswith('pipeline.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert eval(loaded.stdout) == [
        "pipeline.config",
        "pipeline.config.files",
        "pipeline.config.sections",
        "pipeline.config.validation",
        "pipeline.errors",
    ]


def test_a_bad_constraint_is_one_line_naming_the_key(tmp_path):
    space = (ROOT / "search_spaces" / "ptame.yaml").read_text()
    path = tmp_path / "space.yaml"
    path.write_text(
        space.replace(
            'constraints: ["lambda1 + lambda2 <= 1"]',
            'constraints: ["lambda1 + lambda2 <= 1", "lambda1 + lamda2 <= 1"]',
        )
    )
    with pytest.raises(UserError) as error:
        load_search_space(path)
    assert str(error.value) == (
        f"search space {path}: constraints[1]: 'lambda1 + lamda2 <= 1' names 'lamda2', "
        "which is not a parameter of this space"
    )
    path.write_text(space.replace('"lambda1 + lambda2 <= 1"', "{lambda1: 1}"))
    with pytest.raises(UserError) as error:
        load_search_space(path)
    assert str(error.value) == f"search space {path}: constraints[0]: expected str, got {{'lambda1': 1}}"


def test_a_bad_parameter_spec_is_one_line_naming_the_key(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        textwrap.dedent("""
        parameters:
          lambda1: {key: loss.lambda1, type: range, bounds: [0.0, 1.0], values: [0.5]}
        objectives: {road_morf_auc: minimize}
    """)
    )
    with pytest.raises(UserError) as error:
        load_search_space(path)
    assert str(error.value) == (
        f"search space {path}: unknown key 'parameters.lambda1.values'; "
        "valid keys here: bounds, key, scale, type, value_type"
    )


def test_the_packaged_schema_is_what_the_command_writes(tmp_path, capsys):
    out = tmp_path / "schema.json"
    schema_main(["--out", str(out)])
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert out.read_text() == SCHEMA_FILE.read_text(), "stale; run: python -m pipeline.schema --out " + str(SCHEMA_FILE)
    schema_main([])
    assert capsys.readouterr().out == SCHEMA_FILE.read_text()


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=lambda path: path.relative_to(EXPERIMENTS).as_posix())
def test_the_schema_accepts_every_packaged_experiment_and_editors_find_it(validator, path):
    validator.validate(configs.read_yaml(path))
    configs.load(path)
    hint = path.read_text().splitlines()[0]
    prefix = "# yaml-language-server: $schema="
    assert hint.startswith(prefix)
    for folder in (path.parent, ROOT / "experiments" / path.parent.relative_to(EXPERIMENTS)):  # also via the link
        assert (folder / hint.removeprefix(prefix)).resolve() == SCHEMA_FILE.resolve()


@pytest.mark.parametrize(
    "change, where",
    [
        ({"loss": {"lamda1": 0.3}}, "'lamda1' was unexpected"),
        ({"train": {"max_lr": "1e-4"}}, "'1e-4' is not of type 'number'"),
        ({"evaluation": {"percentages": [10, "50"]}}, "'50' is not of type 'integer'"),
        ({"loss": {"lambda1": 1.5}}, "1.5 is greater than the maximum of 1"),
        ({"data": {"decode": "gpux"}}, "'gpux' is not one of ['auto', 'cpu', 'gpu']"),
    ],
)
def test_the_schema_rejects_unknown_keys_and_wrong_types(validator, change, where):
    values = configs.read_yaml(EXPERIMENTS / "demo.yaml")
    for section, entries in change.items():
        values[section] = {**values.get(section, {}), **entries}
    errors = [error.message for error in validator.iter_errors(values)]
    assert any(where in message for message in errors), errors
