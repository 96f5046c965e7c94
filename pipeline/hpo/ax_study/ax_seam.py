"""The one door to Ax beyond ``ax.api.Client``'s public methods.

Ax 1.3 keeps some of what a resumable, multi-objective search needs behind private names, and documents its
analyses as not part of its API. Every such use is here, each with the reason, so an Ax upgrade that moves one
breaks this module (and ``tests/hpo/test_resume_fixture.py``, which opens a search folder written by this code), not
the search. ``pyproject.toml`` caps ``ax-platform`` below the next release line that was not tried.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ax.adapter.transforms.base import Transform
    from ax.api import Client
    from ax.core.experiment import Experiment
    from ax.generation_strategy.generation_strategy import GenerationStrategy

    from pipeline.hpo.ax_study.space import Method


def quiet_ax() -> None:
    """Import Ax without its import-time INFO chatter; its console handler shows errors only."""
    logging.disable(logging.INFO)
    try:
        import ax  # noqa: F401  (attaches Ax's handler)
        import ax.storage.sqa_store.with_db_settings_base  # noqa: F401  (logs at import)
    finally:
        logging.disable(logging.NOTSET)

    for handler in logging.getLogger("ax").handlers:  # its modelling notices, e.g. "outcome is constant"
        handler.setLevel(logging.ERROR)


def no_botorch_kernel_compile() -> None:
    """Keep BoTorch from compiling its fused qLogEHVI C++ kernel; it runs its PyTorch path instead.

    BoTorch 0.18 compiles the kernel with ``torch.utils.cpp_extension.load`` (g++, ``-march=native``) at the first
    multi-objective generation on each machine and environment path, into ``~/.cache/torch_extensions``: 35 CPU-s,
    against 0.15 s saved per later generation (1.19 -> 1.04 s; ``benchmarks/results/botorch_kernel.md``), so a
    first search (the demo's 15 BoTorch trials: 2.3 s) never earns it back. The two paths' points differ slightly
    (e.g. λ1 0.4955 against 0.4969). Private: the module's "already tried to load" flag.
    """
    from botorch.acquisition.multi_objective import logei

    logei._load_attempted = True


def experiment(client: Client) -> Experiment:
    """The client's experiment. Ax 1.3's ``Client`` exposes it only as ``_experiment``; the search needs it for
    the trials' statuses, failure reasons and run metadata (extra metrics), the observed data, the objective
    thresholds and, on resume, the saved search space to compare with the current one."""
    return client._experiment


def set_random_seed(client: Client, seed: int) -> None:
    """Seed BoTorch's candidate generation of a loaded client: the JSON snapshot does not store the seed and
    ``Client`` has no public setter, so a resumed search would otherwise generate unseeded points."""
    client._random_seed = seed


def generation_node_name(generator_run: Any) -> str | None:
    """The generation-strategy node ("Sobol", "MBM") that produced a trial's point, for the trial table; Ax keeps
    it only as ``GeneratorRun._generation_node_name``. None for a manual trial."""
    return getattr(generator_run, "_generation_node_name", None)


# Acquisition-function optimisation of the BoTorch (MBM) node; see `generation_strategy`.
# Ax's defaults run, per combination of choice values (3 for λ_area), 20 SLSQP restarts picked from 1024
# starting points that a hit-and-run sampler draws inside the linear constraints after a 10,000-step
# burn-in: ~18 CPU-s per trial single-threaded. With `botorch_transforms` there is one optimisation, and
# these settings make it ~1.9 CPU-s (tests/benchmarks/generation.py; maxiter is SLSQP's, default 200).
BOTORCH_GEN_OPTIONS: dict[str, Any] = {
    "optimizer_kwargs": {"num_restarts": 5, "raw_samples": 128, "options": {"n_burnin": 500, "maxiter": 100}},
}


def botorch_transforms() -> list[type[Transform]]:
    """Ax's continuous-relaxation transforms for the MBM node, in place of its default ``MBM_X_trans``.

    Ordered choices become integer ranges over their indices (λ_area 0.5/1/2 -> 0/1/2) and integers become
    floats rounded to the nearest integer, so the acquisition function is optimised once over a continuous
    box (plus the linear constraints) instead of once per combination of choice values. BoTorch rounds every
    candidate (through Ax's transforms) before it scores the restarts, so the returned point has a listed
    choice value; the constraints may only use range parameters, so rounding cannot break them.
    Unordered choices are one-hot encoded and relaxed the same way.
    """
    from ax.adapter.registry import Cont_X_trans, Y_trans

    return [*Cont_X_trans, *Y_trans]


def generation_strategy(method: Method, initialization_trials: int, seed: int) -> GenerationStrategy:
    """Ax's own Sobol -> MBM strategy for ``method``, with a cheaper BoTorch step (`BOTORCH_GEN_OPTIONS`); Ax's
    Sobol-only strategy for ``random_search``; uniform random points for ``uniform``.

    The strategy (nodes "Sobol" then "MBM", transition after ``initialization_trials``) is the one
    ``Client.configure_generation_strategy`` builds; only the MBM node's generator spec changes:
    ``transforms`` = `botorch_transforms()` and ``model_gen_options`` = `BOTORCH_GEN_OPTIONS`. Both are
    plain data, so the strategy round-trips through the client's JSON snapshot.
    """
    from ax.adapter.registry import Generators
    from ax.api.utils.generation_strategy_dispatch import choose_generation_strategy
    from ax.api.utils.structs import GenerationStrategyDispatchStruct
    from ax.generation_strategy.generation_node import GenerationNode
    from ax.generation_strategy.generation_strategy import GenerationStrategy
    from ax.generation_strategy.generator_spec import GeneratorSpec

    if method == "uniform":  # independent uniform points, a baseline for the search's evidence
        return GenerationStrategy(
            name="Uniform",
            nodes=[
                GenerationNode(
                    name="Uniform",
                    generator_specs=[GeneratorSpec(generator_enum=Generators.UNIFORM, generator_kwargs={"seed": seed})],
                )
            ],
        )
    strategy = choose_generation_strategy(
        GenerationStrategyDispatchStruct(
            method=method,
            initialization_budget=initialization_trials,
            initialize_with_center=False,
            initialization_random_seed=seed,
        )
    )
    for node in strategy._nodes:  # no public way to reach a node's generator specs
        for spec in node.generator_specs:
            if spec.generator_enum == Generators.BOTORCH_MODULAR:
                spec.generator_kwargs["transforms"] = botorch_transforms()
                spec.generator_gen_kwargs["model_gen_options"] = copy.deepcopy(BOTORCH_GEN_OPTIONS)
    return strategy


def model_predictions(client: Client, points: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """The predicted mean of every metric at each point, from a BoTorch model (Ax's modular default) fitted on all of
    the experiment's data: the model ``Client.get_pareto_frontier`` falls back to, fitted anew here so that it sees
    the last trial and does not depend on the generation strategy's current node (Sobol has no model)."""
    from ax.adapter.registry import Generators
    from ax.core.observation import ObservationFeatures

    experiment = client._experiment
    adapter = Generators.BOTORCH_MODULAR(experiment=experiment, data=experiment.lookup_data())
    means, _ = adapter.predict([ObservationFeatures(parameters=dict(point)) for point in points])
    return [{name: float(values[index]) for name, values in means.items()} for index in range(len(points))]


def analysis_figures(client: Client) -> tuple[list[tuple[str, Any]], list[tuple[str, str]]]:
    """Ax's plotly analyses of a search, as ``(title, figure)``, and ``(title, reason)`` for those that could not be
    computed: parallel coordinates and sensitivity per objective, the two objectives' observed scatter with the
    Pareto frontier, and the utility (hypervolume) progression. Ax documents these classes as not part of its
    API; the README's review section depends on them."""
    from ax.analysis import Analysis
    from ax.analysis.plotly import (
        ParallelCoordinatesPlot,
        PlotlyAnalysisCard,
        ScatterPlot,
        SensitivityAnalysisPlot,
        UtilityProgressionAnalysis,
    )

    optimization = experiment(client).optimization_config
    assert optimization is not None  # SearchSpace.configure set the objectives
    objectives = list(optimization.objective.metric_names)
    analyses: list[Analysis] = [ParallelCoordinatesPlot(name) for name in objectives]
    analyses += [SensitivityAnalysisPlot(name) for name in objectives]
    if len(objectives) == 2:
        x, y = objectives
        analyses.append(ScatterPlot(x, y, use_model_predictions=False, show_pareto_frontier=True))
    analyses.append(UtilityProgressionAnalysis())
    figures, skipped = [], []
    for group in client.compute_analyses(analyses, display=False):
        for card in group.flatten():
            if not isinstance(card, PlotlyAnalysisCard):
                skipped.append((card.title, (card.subtitle or str(card.blob)).strip().splitlines()[0]))
                continue
            figure = card.get_figure()
            if not figure.layout.title.text:
                figure.update_layout(title=card.title)
            figures.append((card.title, figure))
    return figures, skipped
