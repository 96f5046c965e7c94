"""Declarative search spaces: a YAML file -> a validated `SearchSpace` -> an Ax `Client` setup.

Each parameter names the experiment-config key it sets (``loss.lambda1``), so a new search is a new
YAML file, not new code. Pydantic models check the file;
every error is one line that names the file and the offending key and says how to fix it.
Ax is imported only by `SearchSpace.configure`, so loading and validating a space stays cheap.
"""

from __future__ import annotations

import dataclasses
import keyword
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError, ValidationInfo, field_validator
from pydantic import dataclasses as pydantic_dataclasses

from pipeline.config import STRICT, Bool, ExperimentConfig, Float, Int, read_yaml, user_error
from pipeline.config.sections import CONSTRAINT_ROUND_OFF
from pipeline.errors import UserError
from pipeline.hpo.ax_study import ax_seam

if TYPE_CHECKING:
    from ax.api import ChoiceParameterConfig, Client, RangeParameterConfig

Direction = Literal["minimize", "maximize"]
Method = Literal["fast", "quality", "random_search", "uniform"]
# The final choice among the Pareto trials: the largest LeRF − MoRF as observed, or as Ax's model predicts it.
ChoiceRule = Literal["observed", "predicted"]
ValueType = Literal["float", "int", "str", "bool"]
Fail = Callable[[str, str], UserError]  # (key, message) -> the error that names the file and the key

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME_IN_TEXT = re.compile(r"(?<![\w.])[A-Za-z_]\w*")  # skips the 'e' of 1e-3
_RELATION = re.compile(r"(<=|>=)")


@dataclass(frozen=True)
class Parameter:
    """One searched value and the experiment-config key it is written to."""

    name: str
    key: str
    type: Literal["range", "choice"]
    value_type: ValueType
    bounds: tuple[float, float] | None = None
    log_scale: bool = False
    values: tuple[Any, ...] = ()
    ordered: bool = False

    @property
    def range_bounds(self) -> tuple[float, float]:
        """``bounds``, which every range parameter has (a choice has none)."""
        if self.bounds is None:
            raise ValueError(f"parameter {self.name!r} is a {self.type} parameter without bounds")
        return self.bounds

    def ax_config(self) -> RangeParameterConfig | ChoiceParameterConfig:
        from ax.api import ChoiceParameterConfig, RangeParameterConfig

        if self.type == "range":
            assert self.value_type in ("float", "int")  # a range is of numbers (_RangeSpec)
            return RangeParameterConfig(
                name=self.name,
                bounds=self.range_bounds,
                parameter_type=self.value_type,
                scaling="log" if self.log_scale else "linear",
            )
        return ChoiceParameterConfig(
            name=self.name, values=list(self.values), parameter_type=self.value_type, is_ordered=self.ordered
        )


@dataclass(frozen=True)
class LinearConstraint:
    """``sum(weights[name] * value) <= bound``, parsed from ``text``."""

    text: str
    weights: dict[str, float]
    bound: float

    def holds(self, parameters: Mapping[str, float], tolerance: float = CONSTRAINT_ROUND_OFF) -> bool:
        """Within ``tolerance``, the optimiser's round-off that the loss config accepts too."""
        total = sum(weight * float(parameters[name]) for name, weight in self.weights.items())
        return total <= self.bound + tolerance


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: parameters, linear constraints, objectives and how to start."""

    name: str
    seed: int
    parameters: tuple[Parameter, ...]
    constraints: tuple[LinearConstraint, ...]
    objectives: dict[str, Direction]
    initialization_trials: int = 5
    method: Method = "fast"
    thresholds: dict[str, float] | None = None  # fixed objective thresholds; None: from trivial maps
    choice: ChoiceRule = "predicted"

    @property
    def parameter_names(self) -> list[str]:
        return [parameter.name for parameter in self.parameters]

    @property
    def objective_names(self) -> list[str]:
        return list(self.objectives)

    @property
    def directions(self) -> dict[str, Direction]:
        return dict(self.objectives)

    @property
    def objective_signs(self) -> dict[str, float]:
        """+1 for objectives to maximise, -1 for those to minimise."""
        return {name: 1.0 if direction == "maximize" else -1.0 for name, direction in self.objectives.items()}

    @property
    def objective_string(self) -> str:
        """Ax's objective syntax, e.g. ``"-road_morf_auc, road_lerf_auc"`` (``-`` = minimise)."""
        return ", ".join(("-" if direction == "minimize" else "") + name for name, direction in self.objectives.items())

    def contains(self, parameters: Mapping[str, Any]) -> bool:
        """Whether a point lies in the bounds and choices and satisfies every constraint."""
        for parameter in self.parameters:
            value = parameters[parameter.name]
            if parameter.type == "choice" and value not in parameter.values:
                return False
            if parameter.type == "range" and not parameter.range_bounds[0] <= value <= parameter.range_bounds[1]:
                return False
        return all(constraint.holds(parameters) for constraint in self.constraints)

    def configure(self, client: Client, seed: int | None = None, thresholds: Mapping[str, float] | None = None) -> None:
        """Set up a fresh Ax client: experiment, objectives, Sobol-then-BoTorch strategy.

        ``seed`` (e.g. from ``--seed``) replaces the space's own seed for the Sobol initialisation.
        ``thresholds`` (objective -> value) is the reference point of the multi-objective search: the worst
        value of each objective worth having.
        """
        client.configure_experiment(
            parameters=[parameter.ax_config() for parameter in self.parameters],
            parameter_constraints=[constraint.text for constraint in self.constraints],
            name=self.name,
        )
        bounds = [
            f"{name} {'>=' if self.objectives[name] == 'maximize' else '<='} {value!r}"
            for name, value in (thresholds or {}).items()
        ]
        client.configure_optimization(objective=self.objective_string, outcome_constraints=bounds or None)
        client.set_generation_strategy(
            ax_seam.generation_strategy(self.method, self.initialization_trials, self.seed if seed is None else seed)
        )

    def config_values(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's parameters by experiment-config key, as typed as Ax gave them: ``{"loss.lambda1": 0.3, ...}``
        (for `pipeline.config.with_values`)."""
        return {parameter.key: parameters[parameter.name] for parameter in self.parameters}


def _name(value: str) -> str:
    if not _IDENTIFIER.fullmatch(value) or keyword.iskeyword(value):
        raise ValueError(f"{value!r} is not a valid name; use letters, digits and '_' (e.g. lambda1)")
    return value


# Keys that decide what a trial is measured on or by (the data, the scoring, the explained classifier): a space
# that searched them would compare trials measured differently.
MEASUREMENT_KEYS = ("data.", "evaluation.", "checkpoints.", "model.backbone")


def _config_key(value: str) -> str:
    """Check that ``value`` is a dotted path to a value field of `ExperimentConfig` that a search may change."""
    if value.startswith(MEASUREMENT_KEYS):
        raise ValueError(
            f"{value!r} decides what trials are measured on or by, so trials would not be comparable; "
            "a search space searches training settings only (loss.*, train.*, model.auxiliary, ...)"
        )
    section: Any = ExperimentConfig
    for depth, part in enumerate(value.split(".")):
        if not dataclasses.is_dataclass(section):
            raise ValueError(f"{value!r}: '{'.'.join(value.split('.')[:depth])}' is a value, not a section")
        fields = typing.get_type_hints(section)
        if part not in fields:
            raise ValueError(f"{value!r}: no config key '{part}' here; valid keys: {', '.join(fields)}")
        section = fields[part]
    if dataclasses.is_dataclass(section):
        raise ValueError(f"{value!r} is a config section; name one of its keys, e.g. '{value}.<key>'")
    return value


Name = Annotated[str, AfterValidator(_name)]
ConfigKey = Annotated[str, AfterValidator(_config_key)]
Finite = Annotated[Float, Field(allow_inf_nan=False)]


@pydantic_dataclasses.dataclass(config=STRICT, kw_only=True)
class _RangeSpec:
    type: Literal["range"]
    key: ConfigKey
    scale: Literal["linear", "log"] = "linear"
    value_type: Literal["float", "int"] = "float"
    bounds: list[Finite]  # after scale and value_type, which its check reads

    @field_validator("bounds")
    @classmethod
    def _check_bounds(cls, bounds: list[float], info: ValidationInfo) -> list[float]:
        if len(bounds) != 2:
            raise ValueError(f"expected [lower, upper], got {bounds}")
        if not bounds[0] < bounds[1]:
            raise ValueError(f"{bounds} is empty or inverted; the lower bound must be below the upper")
        if info.data.get("scale") == "log" and bounds[0] <= 0:
            raise ValueError(f"{bounds}: scale: log needs a positive lower bound, e.g. [1e-5, 1e-3]")
        if info.data.get("value_type") == "int" and not all(bound.is_integer() for bound in bounds):
            raise ValueError(f"{bounds}: value_type: int needs integer bounds")
        return bounds

    def parameter(self, name: str) -> Parameter:
        number = int if self.value_type == "int" else float
        bounds = (number(self.bounds[0]), number(self.bounds[1]))  # (_check_bounds: two of them)
        return Parameter(name, self.key, "range", self.value_type, bounds=bounds, log_scale=self.scale == "log")


@pydantic_dataclasses.dataclass(config=STRICT, kw_only=True)
class _ChoiceSpec:
    type: Literal["choice"]
    key: ConfigKey
    values: list[Bool | Int | Float | str]
    ordered: Bool | None = None  # None: ordered when the values are numbers

    @field_validator("values")
    @classmethod
    def _check_values(cls, values: list[Any]) -> list[Any]:
        if not values:
            raise ValueError(f"expected a non-empty list of choices, got {values!r}")
        if len(set(values)) != len(values):
            raise ValueError(f"{values} contains duplicates")
        if _value_type(values) is None:
            raise ValueError(f"{values} mixes types; use all numbers, all strings or all booleans")
        return values

    def parameter(self, name: str) -> Parameter:
        value_type = _value_type(self.values)
        assert value_type is not None  # _check_values refused mixed types
        values = tuple(map(float, self.values)) if value_type == "float" else tuple(self.values)
        ordered = value_type in ("int", "float") if self.ordered is None else self.ordered
        return Parameter(name, self.key, "choice", value_type, values=values, ordered=ordered)


def _value_type(values: list[Any]) -> ValueType | None:
    """The one Ax parameter type of all ``values`` (ints and floats together are floats), or None."""
    kinds = {type(value) for value in values}
    typed: tuple[tuple[ValueType, set[type]], ...] = (
        ("bool", {bool}),
        ("int", {int}),
        ("float", {int, float}),
        ("str", {str}),
    )
    return next((name for name, allowed in typed if kinds <= allowed), None)


@pydantic_dataclasses.dataclass(config=STRICT, kw_only=True)
class _SpaceFile:
    """A search-space YAML file as written; `load_search_space` checks what ties its parts together."""

    name: str | None = Field(default=None, min_length=1)  # None: the file's stem
    seed: Int = Field(default=0, ge=0)
    parameters: dict[Name, Annotated[_RangeSpec | _ChoiceSpec, Field(discriminator="type")]] = Field(min_length=1)
    constraints: list[str] | None = None
    objectives: dict[Name, Direction] = Field(min_length=1)
    thresholds: dict[Name, Finite] | None = None
    initialization_trials: Int = Field(default=5, ge=1)
    method: Method = "fast"
    choice: ChoiceRule = "predicted"  # replays on the demo favoured it (tests/benchmarks/search_quality.py)


_SPACE_FILE = TypeAdapter(_SpaceFile)


def _parse_constraint(fail: Fail, text: str, key: str, parameters: dict[str, Parameter]) -> LinearConstraint:
    """Parse ``"lambda1 + lambda2 <= 1"`` (or ``>=``) into weights and a bound."""
    from tokenize import TokenError

    import sympy
    from sympy.parsing.sympy_parser import parse_expr

    sides = _RELATION.split(text)
    if len(sides) != 3:
        raise fail(key, f"{text!r} must contain exactly one '<=' or '>=', e.g. 'lambda1 + lambda2 <= 1'")
    names = set(_NAME_IN_TEXT.findall(text))
    for name in sorted(names):
        if name not in parameters:
            raise fail(key, f"{text!r} names {name!r}, which is not a parameter of this space")
        parameter = parameters[name]
        if parameter.type != "range" or parameter.log_scale:
            raise fail(key, f"{text!r}: constraints may only use linear-scale range parameters, not {name!r}")
    symbols = {name: sympy.Symbol(name) for name in names}
    try:
        lhs, relation, rhs = sides
        expression = parse_expr(lhs, local_dict=dict(symbols)) - parse_expr(rhs, local_dict=dict(symbols))
        if relation == ">=":
            expression = -expression
        polynomial = sympy.Poly(sympy.expand(expression), *symbols.values()) if symbols else None
    except (SyntaxError, TypeError, ValueError, TokenError, sympy.SympifyError, sympy.PolynomialError) as error:
        raise fail(key, f"{text!r} is not a linear constraint ({error})") from None
    if polynomial is None or polynomial.total_degree() != 1:
        raise fail(key, f"{text!r} is not linear in the parameters; write e.g. 'lambda1 + 2*lambda2 <= 1'")
    weights = {name: float(polynomial.coeff_monomial(symbol)) for name, symbol in symbols.items()}
    return LinearConstraint(text.strip(), weights, -float(polynomial.coeff_monomial(1)))


def _check_feasible(fail: Fail, parameters: dict[str, Parameter], constraints: list[LinearConstraint]) -> None:
    """Reject constraints that leave no interior point in the bounds (Sobol could never sample one).

    Solves for the largest ball (Chebyshev centre) inside {x in bounds, w.x <= b}; radius 0 = empty.
    """
    import numpy as np
    from scipy.optimize import linprog

    names = sorted({name for constraint in constraints for name in constraint.weights})
    if not names:
        return
    lower = np.array([parameters[name].range_bounds[0] for name in names], dtype=float)
    upper = np.array([parameters[name].range_bounds[1] for name in names], dtype=float)
    scale = upper - lower
    rows, limits = [], []
    for constraint in constraints:  # w.x <= b in unit-box coordinates u = (x - lower) / scale, plus radius r
        weights = np.array([constraint.weights.get(name, 0.0) for name in names])
        rows.append([*(weights * scale), np.linalg.norm(weights * scale)])
        limits.append(constraint.bound - float(weights @ lower))
    for unit in np.eye(len(names)):  # r <= u_i <= 1 - r
        rows += [[*-unit, 1.0], [*unit, 1.0]]
        limits += [0.0, 1.0]
    maximise_radius = [0.0] * len(names) + [-1.0]
    bounds = [(None, None)] * len(names) + [(0.0, None)]
    result = linprog(maximise_radius, A_ub=np.array(rows), b_ub=np.array(limits), bounds=bounds)
    if result.status == 2 or (result.status == 0 and -result.fun <= 1e-9):
        box = ", ".join(f"{name} in {list(parameters[name].range_bounds)}" for name in names)
        raise fail(
            "constraints",
            f"{[constraint.text for constraint in constraints]} cannot be satisfied with {box}: the search "
            "space is empty (or a single boundary point); loosen the constraints or widen the bounds",
        )


def load_search_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file (see ``search_spaces/ptame.yaml``)."""
    path = Path(path)

    def fail(key: str, message: str) -> UserError:
        return UserError(f"search space {path}: {key}: {message}")

    try:
        spec = _SPACE_FILE.validate_python(read_yaml(path))
    except ValidationError as error:
        raise user_error(error, _SpaceFile, f"search space {path}: ") from None
    parameters = {name: parameter.parameter(name) for name, parameter in spec.parameters.items()}
    keys = [parameter.key for parameter in parameters.values()]
    for key in keys:
        if keys.count(key) > 1:
            raise fail("parameters", f"several parameters set the config key {key!r}; give each its own key")
    constraints = [
        _parse_constraint(fail, text, f"constraints[{index}]", parameters)
        for index, text in enumerate(spec.constraints or [])
    ]
    _check_feasible(fail, parameters, constraints)
    if spec.thresholds is not None and set(spec.thresholds) != set(spec.objectives):
        raise fail(
            "thresholds",
            f"give one threshold per objective ({', '.join(spec.objectives)}), got {', '.join(spec.thresholds)}",
        )
    return SearchSpace(
        name=spec.name or path.stem,
        seed=spec.seed,
        parameters=tuple(parameters.values()),
        constraints=tuple(constraints),
        objectives=spec.objectives,
        thresholds=spec.thresholds,
        initialization_trials=spec.initialization_trials,
        method=spec.method,
        choice=spec.choice,
    )
