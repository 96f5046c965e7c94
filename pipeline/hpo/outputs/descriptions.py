"""What a reviewer reads in MLflow, built from configs and scores (no server needed): the link to a search's
runs, the search run's description, and the registered version's description, tags and alias.

MLflow 3 opens an experiment in its GenAI view (traces); ``?workflowType=machine_learning`` on the experiment
page (``#/experiments/<id>``) opens the runs table of its "Model training" view instead.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline import config as configs
from pipeline.config import DataConfig, ExperimentConfig
from pipeline.hpo.ax_study.records import TrialRecord
from pipeline.hpo.ax_study.space import Parameter, SearchSpace
from pipeline.hpo.ax_study.trial_state import TrialState
from pipeline.metrics.road import road_protocol_of

ALIAS_PREFIX = "search-"  # only for search names MLflow reserves as aliases ("latest", "v3")
SCORES = (
    ("road_morf_auc", "MoRF AUC {:.4f} (lower is better)"),  # metric, how `scores_line` shows it
    ("road_lerf_auc", "LeRF AUC {:.4f} (higher is better)"),
    ("ad_100", "AD@100 {:.1f}"),
    ("ic_100", "IC@100 {:.1f}"),
    ("class_coverage", "class coverage {:.2f}"),
)


def search_alias(search: str) -> str:
    """The registry alias of a search's chosen version: the search name with characters other than letters,
    digits, ``_`` and ``-`` replaced by ``_``; names MLflow reserves (``latest``, ``v<digits>``) get ``search-``."""
    alias = re.sub(r"[^A-Za-z0-9_-]", "_", search)[:255] or "_"
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        alias = ALIAS_PREFIX + alias
    return alias


def scores_line(metrics: Mapping[str, float]) -> str:
    """``MoRF AUC 0.2900 (lower is better), LeRF AUC ..., AD@100 ..., IC@100 ..., class coverage ...``."""
    return ", ".join(template.format(metrics[key]) for key, template in SCORES if key in metrics)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _section(values: Mapping[str, Any], skip: Sequence[str] = ()) -> str:
    """``key: value; ...`` of a config section."""
    return "; ".join(f"{key}: {value}" for key, value in values.items() if key not in skip)


def _data(data: DataConfig) -> str:
    if data.dataset == "demo":
        return f"the demo photos ({data.demo_train_views} training views, {data.demo_eval_views} per evaluation split)"
    limits = ", ".join(
        f"{name} {value}"
        for name, value in (
            ("train_limit", data.train_limit),
            ("val_limit", data.val_limit),
            ("test_limit", data.test_limit),
        )
        if value is not None
    )
    return f"{data.dataset} at `{data.root}`" + (f" ({limits})" if limits else "")


def _parameter(parameter: Parameter) -> str:
    if parameter.type == "range":
        low, high = parameter.range_bounds
        values = f"range [{low:g}, {high:g}]" + (", log scale" if parameter.log_scale else "")
    else:
        values = "choice " + ", ".join(map(_number, parameter.values))
    return f"- `{parameter.name}` → `{parameter.key}`: {values}"


def _trial(record: TrialRecord, objectives: Sequence[str]) -> str:
    parameters = ", ".join(f"{name}={_number(value)}" for name, value in record.parameters.items())
    scores = ", ".join(f"{name} {record.metrics[name]:.4f}" for name in objectives)
    return f"trial {record.index} ({parameters}): {scores}"


@dataclass(frozen=True)
class FinalHead:
    """A search's final head: the trial it was trained with, its config, test scores and registry entry."""

    search: str
    trial: TrialRecord
    config: ExperimentConfig
    test: Mapping[str, float]  # `Evaluation.metrics()` on the test split
    test_images: int
    coverage: Mapping[str, int]  # `ClassCoverage.summary()`
    model: str  # registered model name
    version: str | None = None

    @property
    def alias(self) -> str:
        return search_alias(self.search)

    @property
    def uri(self) -> str:
        return f"models:/{self.model}@{self.alias}"


def version_tags(head: FinalHead) -> dict[str, str]:
    """Tags of the registered version: its search, trial, λ's, loss form and ROAD protocol."""
    config = head.config
    loss = config.loss
    return {
        "search": head.search,
        "trial": str(head.trial.index),
        "backbone": config.model.backbone,
        "auxiliary": config.model.auxiliary,
        "lambda1": f"{loss.lambda1:.4g}",
        "lambda2": f"{loss.lambda2:.4g}",
        "lambda3": f"{loss.variation_weight:.4g}",
        "lambda_area": f"{loss.lambda_area:.4g}",
        "loss_form": loss.describe(),
        "road_protocol": road_protocol_of(config.evaluation),
    }


def version_description(head: FinalHead) -> str:
    """Markdown for the registered version: what it explains, how it was trained, its test scores and coverage."""
    config, loss, train = head.config, head.config.loss, head.config.train
    coverage = head.coverage
    share = head.test.get("class_coverage")
    on_test = "" if share is None else f"; {share:.2f} of the test images are explained by a trained class"
    return "\n\n".join(
        [
            f"P-TAME explainer of **{config.model.backbone}** (auxiliary network **{config.model.auxiliary}**, "
            f"masking {config.model.masking}), chosen by search `{head.search}` (trial {head.trial.index}).",
            f"**Training**: loss λ1·CE + λ2·area + λ3·variation ({loss.describe()}) with "
            f"λ1 = {loss.lambda1:.4g}, λ2 = {loss.lambda2:.4g}, λ3 = {loss.variation_weight:.4g}, "
            f"λ_area = {loss.lambda_area:.4g}; on {_data(config.data)}; {train.epochs} epoch(s), "
            f"batch size {train.batch_size}, max lr {train.max_lr:g}, seed {train.seed}.",
            f"**Test split** ({head.test_images} images; ROAD: {road_protocol_of(config.evaluation)}): "
            f"{scores_line(head.test)}.",
            f"**Class coverage**: {coverage['classes_trained']} of {coverage['num_classes']} classes were explained at "
            f"least {coverage['min_count']} times in training{on_test}. Maps of the other classes are untrained, "
            "not explanations (`coverage` is False for them).",
            f'Load: `mlflow.pyfunc.load_model("{head.uri}")` or '
            f"`python -m pipeline.explain --model {head.uri} photo.jpg`.",
        ]
    )


def search_description(
    name: str,
    base: ExperimentConfig,
    space: SearchSpace,
    trials: int,
    records: Sequence[TrialRecord],
    pareto: Sequence[TrialRecord],
    final: FinalHead | None = None,
) -> str:
    """Markdown for the search's parent run: the setup, the search space, the ROAD protocol and loss, the
    progress and Pareto set, and (at the end) the chosen trial with its test scores and registry alias."""
    searched = {parameter.key.removeprefix("loss.") for parameter in space.parameters}
    sections = configs.to_dict(base)
    objectives = space.objective_names
    lines = [
        f"**P-TAME search `{name}`**: the loss weights of a head explaining **{base.model.backbone}** (auxiliary "
        f"**{base.model.auxiliary}**) on {_data(base.data)}; {base.train.epochs} epoch(s) per trial.",
        f"**Search space** `{space.name}` (seed {space.seed}; {space.initialization_trials} Sobol trials, then "
        f"BoTorch, method {space.method}):",
        "\n".join(
            [
                *map(_parameter, space.parameters),
                *(f"- constraint: {c.text}" for c in space.constraints),
                "- objectives on the validation split: "
                + ", ".join(f"{name} ({direction})" for name, direction in space.objectives.items()),
            ]
        ),
        f"**ROAD protocol**: {road_protocol_of(base.evaluation)} (`evaluation`: {_section(sections['evaluation'])})",
        f"**Loss**: {base.loss.describe()} (`loss`, besides the searched weights; λ3 = 1 − λ1 − λ2: "
        f"{_section(sections['loss'], skip=sorted(searched)) or 'defaults'})",
    ]
    checkpoints = base.checkpoints
    if checkpoints.percentages:
        stopping = (
            f"trials stop where {checkpoints.dominating} completed trials beat them by more than the noise"
            if checkpoints.early_stop
            else "no early stopping"
        )
        lines.append(
            f"**Checkpoints**: ROAD on the first {checkpoints.images} validation images at "
            f"{'/'.join(map(str, checkpoints.percentages))} % of training; {stopping} (`checkpoints`)."
        )
    counts = Counter(record.status for record in records)
    lines.append(
        f"**Trials**: {counts[TrialState.COMPLETED]} of {trials} completed"
        + (f", {counts[TrialState.EARLY_STOPPED]} stopped early" if counts[TrialState.EARLY_STOPPED] else "")
        + (f", {counts[TrialState.FAILED]} failed" if counts[TrialState.FAILED] else "")
        + "."
    )
    if pareto:
        lines.append("**Pareto set** (validation):\n" + "\n".join(f"- {_trial(r, objectives)}" for r in pareto))
    if final is not None:
        registered = f" Registered as `{final.uri}`" + (f" (version {final.version})." if final.version else ".")
        lines.append(
            f"**Chosen**: {_trial(final.trial, objectives)}. Its final head on the test split "
            f"({final.test_images} images): {scores_line(final.test)}.{registered}"
        )
    return "\n\n".join(lines)
