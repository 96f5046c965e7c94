"""A trial's experiment config: the search's base config with the trial's parameters applied, and the check that
every value the space can choose makes a valid config before any training."""

from __future__ import annotations

from typing import Any

from pipeline import config as configs
from pipeline.config import ExperimentConfig
from pipeline.errors import UserError
from pipeline.hpo.ax_study.space import SearchSpace


def trial_config(base: dict[str, Any], space: SearchSpace, parameters: dict[str, Any]) -> ExperimentConfig:
    """The base experiment with the trial's parameters applied (validated like any config)."""
    return configs.from_dict(configs.with_values(base, space.config_values(parameters)))


def run_params(config: ExperimentConfig) -> dict[str, Any]:
    """What a trial's or the final head's run logs besides the searched parameters: λ3, the loss form, the config."""
    return {
        "lambda3": config.loss.variation_weight,
        "loss_form": config.loss.describe(),
        "config": configs.to_dict(config),
    }


def check_space_fits(base: dict[str, Any], space: SearchSpace) -> None:
    """Fail before any training if a value the space can choose makes an invalid config with ``base``.

    Each choice value and each range's lower bound is tried alone on the base config, e.g. a border penalty
    searched while the base config's loss form has no border term. A space that searches λ1 or λ2 derives
    λ3 = 1 − λ1 − λ2, so a base config that fixes ``loss.lambda3`` is refused too."""
    searched = {parameter.key for parameter in space.parameters}
    fixed = (base.get("loss") or {}).get("lambda3")
    if fixed is not None and searched & {"loss.lambda1", "loss.lambda2"}:
        raise UserError(
            f"search space {space.name!r} searches loss.lambda1/lambda2 (lambda3 = 1 - lambda1 - lambda2) "
            f"but the experiment config fixes loss.lambda3 = {fixed}; add --set loss.lambda3=null"
        )
    for parameter in space.parameters:
        for value in parameter.values or parameter.range_bounds[:1]:
            try:
                configs.from_dict(configs.with_values(base, {parameter.key: value}))
            except UserError as error:
                raise UserError(
                    f"search space {space.name!r} sets {parameter.key} = {value!r}, which the "
                    f"experiment config does not accept: {error}"
                ) from None
