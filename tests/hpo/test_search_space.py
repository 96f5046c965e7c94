"""Search-space YAML: the paper's space loads, and every bad file gives a UserError naming the key."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.hpo.ax_study.space import load_search_space
from pipeline.hpo.trials.trial_configs import trial_config
from pipeline.resources import DEFAULT_SEARCH_SPACE

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
name: test
seed: 7
parameters:
  lambda1: {key: loss.lambda1, type: range, bounds: [0.0, 1.0]}
  lambda2: {key: loss.lambda2, type: range, bounds: [0.0, 1.0]}
  lambda_area: {key: loss.lambda_area, type: choice, values: [0.5, 1, 2]}
  max_lr: {key: train.max_lr, type: range, bounds: [1.0e-5, 1.0e-3], scale: log}
constraints: ["lambda1 + lambda2 <= 1"]
objectives: {road_morf_auc: minimize, road_lerf_auc: maximize}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_paper_space_loads() -> None:
    space = load_search_space(ROOT / "search_spaces" / "ptame.yaml")
    assert space.parameter_names == ["lambda1", "lambda2", "lambda_area"]
    assert space.seed == 12345 and space.initialization_trials == 5 and space.method == "fast"
    assert space.objective_string == "-road_morf_auc, road_lerf_auc"
    assert space.directions == {"road_morf_auc": "minimize", "road_lerf_auc": "maximize"}
    assert space.objective_signs == {"road_morf_auc": -1.0, "road_lerf_auc": 1.0}
    (constraint,) = space.constraints
    assert constraint.weights == {"lambda1": 1.0, "lambda2": 1.0} and constraint.bound == 1.0
    area = space.parameters[2]
    assert area.values == (0.5, 1.0, 2.0) and area.ordered and area.value_type == "float"
    assert space.config_values({"lambda1": 0.3, "lambda2": 0.25, "lambda_area": 2.0}) == {
        "loss.lambda1": 0.3,
        "loss.lambda2": 0.25,
        "loss.lambda_area": 2.0,
    }
    assert space.contains({"lambda1": 0.5, "lambda2": 0.5, "lambda_area": 1.0})
    assert not space.contains({"lambda1": 0.6, "lambda2": 0.5, "lambda_area": 1.0})
    assert not space.contains({"lambda1": 0.1, "lambda2": 0.5, "lambda_area": 3.0})


def test_defaults_log_scale_and_ge_constraint(tmp_path: Path) -> None:
    space = load_search_space(write(tmp_path, GOOD.replace("<= 1", ">= 0.2").replace("seed: 7\n", "")))
    assert space.name == "test" and space.seed == 0 and space.initialization_trials == 5
    assert space.parameters[3].log_scale and space.parameters[3].bounds == (1e-5, 1e-3)
    (constraint,) = space.constraints
    assert constraint.weights == {"lambda1": -1.0, "lambda2": -1.0} and constraint.bound == -0.2
    values = space.config_values({"lambda1": 0.3, "lambda2": 0.2, "lambda_area": 1.0, "max_lr": 1e-4})
    assert values["train.max_lr"] == 1e-4


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("seed: 7", "seed: 7\nsearch: 3", ["search", "unknown key"]),
        ("seed: 7", "seed: [7", ["not valid YAML"]),
        ("seed: 7", "seed: seven", ["seed", "'seven'"]),
        (
            "type: range, bounds: [0.0, 1.0]}\n  lambda2",
            "type: range, bounds: [1.0, 0.0]}\n  lambda2",
            ["parameters.lambda1.bounds", "[1.0, 0.0]", "inverted"],
        ),
        (
            "type: range, bounds: [0.0, 1.0]}\n  lambda2",
            "type: range, bounds: [0.5, 0.5]}\n  lambda2",
            ["parameters.lambda1.bounds", "empty"],
        ),
        (
            "type: range, bounds: [0.0, 1.0]}\n  lambda2",
            "type: range, bounds: [0.0]}\n  lambda2",
            ["parameters.lambda1.bounds", "[lower, upper]"],
        ),
        ("bounds: [1.0e-5, 1.0e-3]", "bounds: [0.0, 1.0e-3]", ["parameters.max_lr.bounds", "log", "positive"]),
        ("scale: log", "scale: logarithmic", ["parameters.max_lr.scale", "'logarithmic'"]),
        ("values: [0.5, 1, 2]", "values: []", ["parameters.lambda_area.values", "non-empty"]),
        ("values: [0.5, 1, 2]", "values: [0.5, a]", ["parameters.lambda_area.values", "mixes types"]),
        (
            "values: [0.5, 1, 2]",
            "values: [0.5, 1, 2], bounds: [0, 1]",
            ["parameters.lambda_area.bounds", "unknown key"],
        ),
        ("type: choice", "type: grid", ["parameters.lambda_area.type", "'grid'"]),
        ("key: loss.lambda1", "key: loss.lamda1", ["parameters.lambda1.key", "'lamda1'", "lambda_area"]),
        ("key: loss.lambda1", "key: loss", ["parameters.lambda1.key", "section"]),
        ("key: loss.lambda2", "key: loss.lambda1", ["parameters", "'loss.lambda1'"]),
        ("key: loss.lambda2", "key: data.demo_eval_views", ["parameters.lambda2.key", "measured on or by"]),
        ("key: loss.lambda2", "key: evaluation.noise", ["parameters.lambda2.key", "training settings only"]),
        ("key: loss.lambda2", "key: checkpoints.images", ["parameters.lambda2.key", "measured on or by"]),
        ("key: loss.lambda2", "key: model.backbone", ["parameters.lambda2.key", "measured on or by"]),
        ('"lambda1 + lambda2 <= 1"', '"lambda1 + lambda4 <= 1"', ["constraints[0]", "'lambda4'"]),
        ('"lambda1 + lambda2 <= 1"', '"lambda1 * lambda2 <= 1"', ["constraints[0]", "not linear"]),
        ('"lambda1 + lambda2 <= 1"', '"lambda1 + lambda2 < 1"', ["constraints[0]", "'<='"]),
        ('"lambda1 + lambda2 <= 1"', '"lambda1 + max_lr <= 1"', ["constraints[0]", "'max_lr'", "linear-scale"]),
        ('"lambda1 + lambda2 <= 1"', '"lambda1 + lambda2 >= 3"', ["constraints", "empty", "lambda1 in [0.0, 1.0]"]),
        (
            '"lambda1 + lambda2 <= 1"',
            '"lambda1 + lambda2 <= 1", "lambda1 >= 0.7", "lambda2 >= 0.7"',
            ["constraints", "cannot be satisfied"],
        ),
        ('"lambda1 + lambda2 <= 1"', '"lambda1 + lambda2 >= 2"', ["constraints", "single boundary point"]),
        ("road_morf_auc: minimize", "road_morf_auc: min", ["objectives.road_morf_auc", "'min'", "'minimize'"]),
        (
            "objectives: {road_morf_auc: minimize, road_lerf_auc: maximize}",
            "objectives: {}",
            ["objectives", "non-empty"],
        ),
    ],
)
def test_bad_space_names_the_key(tmp_path: Path, old: str, new: str, expected: list[str]) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(UserError) as error:
        load_search_space(path)
    message = str(error.value)
    for fragment in expected:
        assert fragment in message, message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_search_space(tmp_path / "nope.yaml")


def test_generation_strategy_is_sobol_then_a_cheaper_mbm() -> None:
    from ax.adapter.registry import Cont_X_trans, Generators, Y_trans

    from pipeline.hpo.ax_study.ax_seam import BOTORCH_GEN_OPTIONS, generation_strategy

    space = load_search_space(ROOT / "search_spaces" / "ptame.yaml")
    strategy = generation_strategy(space.method, space.initialization_trials, seed=3)
    sobol, mbm = strategy._nodes
    assert (sobol.name, mbm.name) == ("Sobol", "MBM")
    (sobol_spec,) = sobol.generator_specs
    assert sobol_spec.generator_enum == Generators.SOBOL and sobol_spec.generator_kwargs == {"seed": 3}
    assert {criterion.threshold for criterion in sobol.transition_criteria} == {5, 2}  # Ax's own budget rules
    (spec,) = mbm.generator_specs
    assert spec.generator_enum == Generators.BOTORCH_MODULAR
    assert spec.generator_kwargs["transforms"] == [*Cont_X_trans, *Y_trans]  # choices relaxed, then rounded
    assert spec.generator_gen_kwargs == {"model_gen_options": BOTORCH_GEN_OPTIONS}
    assert spec.generator_gen_kwargs["model_gen_options"] is not BOTORCH_GEN_OPTIONS  # a copy per strategy
    assert "surrogate_spec" in spec.generator_kwargs  # the rest of Ax's "fast" MBM is kept


def test_a_trials_floats_reach_its_config_bit_for_bit() -> None:
    space = load_search_space(DEFAULT_SEARCH_SPACE)
    awkward = {"lambda1": 0.1 + 0.2, "lambda2": math.nextafter(1 / 3, 1.0), "lambda_area": 0.5}
    config = trial_config({"name": "typed"}, space, awkward)
    assert config.loss.lambda1.hex() == awkward["lambda1"].hex()
    assert config.loss.lambda2.hex() == awkward["lambda2"].hex()
    assert config.loss.lambda_area == 0.5 and config.name == "typed"


def test_a_trial_value_under_a_key_that_is_not_a_section_names_the_key() -> None:
    space = load_search_space(DEFAULT_SEARCH_SPACE)
    with pytest.raises(UserError, match="'loss.lambda1': 'loss' is not a section"):
        trial_config({"loss": 3}, space, {"lambda1": 0.2, "lambda2": 0.2, "lambda_area": 1.0})
