"""Does the search pay on the demo? Search strategies replayed through `ax.benchmark` on a surrogate of real trials.

    python tests/benchmarks/search_quality.py [--seeds 20] [--first-seed 0] [--trials 20] [--results benchmarks/results]
                                              [--name search_quality]

Reads the real demo trials of ``landscape.csv`` (`search_landscape.py`) and of ``trial_noise.csv``
(`trial_noise.py`, the end scores of draw 0: the repeats), fits one Gaussian process per objective (λ1, λ2 and
log2 λ_area as inputs) and states its leave-one-out error. The surrogate's posterior mean is the true landscape of
an `ax.benchmark` problem, observed with Gaussian noise of the measured standard deviation between training seeds;
its reference point is the thresholds a demo search sets (``thresholds.json``). Replayed, ``--seeds`` times
``--trials`` trials each:

- the search as `pipeline.search` configures it (5 Sobol trials, then BoTorch; `pipeline.hpo.ax_study.ax_seam`),
  with the noise inferred by the model (as today) and with the measured standard error given to Ax;
- Sobol only (``method: random_search``), and uniform random points;
- the paper's fixed λ's (one point, no search).

Reports the hypervolume of the true values of the points evaluated so far (Ax's oracle trace) after 5, 10 and 20
trials, and the true LeRF − MoRF of the point each final-choice rule picks after the last trial: the largest
observed LeRF − MoRF on the observed Pareto set (``observed``), the largest model-predicted one on the
model-predicted front (``predicted``), or the top 3 observed re-scored once more with fresh noise, chosen by their
means (``rescored``). Writes ``NAME.md`` and ``NAME.csv`` there and the figure to ``docs/images/NAME.png``. The
defaults were decided on replay seeds 0-19 (``search_quality_decision``) and are reported on seeds 20-39.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

from tests.benchmarks.reporting import described_commit  # noqa: E402

MORF, LERF = "road_morf_auc", "road_lerf_auc"
NEG_LERF = "neg_road_lerf_auc"  # ax.benchmark's multi-objective configs minimise every objective
AREAS = (0.5, 1.0, 2.0)
PAPER_POINT = {"lambda1": 0.07278, "lambda2": 0.92712, "lambda_area": 0.5}  # trial_noise.py's "paper VGG-16"
RULES = ("observed", "predicted", "rescored")
RESCORED = 3
STEPS = (5, 10, 20)  # trials after which the hypervolume is reported


def features(lambda1: float, lambda2: float, area: float) -> list[float]:
    return [lambda1, lambda2, (np.log2(area) + 1) / 2]


def read_points(results: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [n, 3] and observed (MoRF, LeRF) [n, 2] of the landscape and the noise repeats."""
    inputs, outputs = [], []
    with open(results / "landscape.csv") as file:
        for row in csv.DictReader(file):
            inputs.append(features(float(row["lambda1"]), float(row["lambda2"]), float(row["lambda_area"])))
            outputs.append([float(row[MORF]), float(row[LERF])])
    from trial_noise import POINTS  # noqa: PLC0415  (beside this file)

    with open(results / "trial_noise.csv") as file:
        for row in csv.DictReader(file):
            if row["percent"] == "100" and row["draw"] == "0":
                inputs.append(features(*POINTS[row["point"]]))
                outputs.append([float(row["MoRF"]), float(row["LeRF"])])
    return torch.tensor(inputs, dtype=torch.float64), torch.tensor(outputs, dtype=torch.float64)


def seed_noise(results: Path) -> dict[str, float]:
    """The standard deviation between training seeds (draw 0, end of training), pooled over the fixed points."""
    groups: dict[str, list[tuple[float, float]]] = {}
    with open(results / "trial_noise.csv") as file:
        for row in csv.DictReader(file):
            if row["percent"] == "100" and row["draw"] == "0":
                groups.setdefault(row["point"], []).append((float(row["MoRF"]), float(row["LeRF"])))
    pooled = {}
    for column, name in enumerate((MORF, LERF)):
        squares = sum(
            sum((v[column] - statistics.mean(x[column] for x in values)) ** 2 for v in values)
            for values in groups.values()
        )
        pooled[name] = (squares / sum(len(values) - 1 for values in groups.values())) ** 0.5
    return pooled


def fit_gp(inputs: torch.Tensor, outputs: torch.Tensor):
    """A SingleTaskGP with inferred noise on one output column, inputs in [0, 1]."""
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    model = SingleTaskGP(inputs, outputs.unsqueeze(-1), outcome_transform=Standardize(m=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return model


def posterior_mean(model, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.posterior(inputs).mean.squeeze(-1)


def leave_one_out(inputs: torch.Tensor, outputs: torch.Tensor) -> dict[str, dict[str, float]]:
    """RMSE and R² of each objective's GP predicting each point from the others."""
    report = {}
    for column, name in enumerate((MORF, LERF)):
        predicted = []
        for index in range(len(inputs)):
            keep = torch.arange(len(inputs)) != index
            model = fit_gp(inputs[keep], outputs[keep, column])
            predicted.append(float(posterior_mean(model, inputs[index : index + 1])))
        truth = outputs[:, column].numpy()
        errors = np.array(predicted) - truth
        report[name] = {
            "rmse": float(np.sqrt(np.mean(errors**2))),
            "r2": float(1 - np.sum(errors**2) / np.sum((truth - truth.mean()) ** 2)),
        }
    return report


@dataclass
class Surrogate:
    """The landscape's true values: the posterior means of the two fitted GPs."""

    morf: object
    lerf: object

    def __call__(self, parameters: Mapping[str, float]) -> tuple[float, float]:
        x = torch.tensor(
            [features(parameters["lambda1"], parameters["lambda2"], parameters["lambda_area"])], dtype=torch.float64
        )
        return float(posterior_mean(self.morf, x)), float(posterior_mean(self.lerf, x))


def grid(step: int = 60) -> list[dict[str, float]]:
    points = []
    for i in range(step + 1):
        for j in range(step + 1 - i):
            for area in AREAS:
                points.append({"lambda1": i / step, "lambda2": j / step, "lambda_area": area})
    return points


def hypervolume(values: list[tuple[float, float]], thresholds: Mapping[str, float]) -> float:
    """The 2-d hypervolume of (MoRF, LeRF) pairs dominating the reference point (MoRF ≤, LeRF ≥ its values)."""
    points = sorted(
        (thresholds[MORF] - morf, lerf - thresholds[LERF])
        for morf, lerf in values
        if morf < thresholds[MORF] and lerf > thresholds[LERF]
    )
    volume, best = 0.0, 0.0
    for gain_morf, gain_lerf in reversed(points):  # from the largest MoRF gain down
        if gain_lerf > best:
            volume += gain_morf * (gain_lerf - best)
            best = gain_lerf
    return volume


def problem(
    surrogate: Surrogate,
    thresholds: Mapping[str, float],
    noise: Mapping[str, float],
    trials: int,
    observe_noise: bool,
    optimal: float,
):
    """The `ax.benchmark` problem: the paper's space, the surrogate as its test function, the measured noise."""
    from ax.api import Client
    from ax.benchmark.benchmark_problem import BenchmarkProblem, get_moo_opt_config
    from ax.benchmark.benchmark_test_function import BenchmarkTestFunction
    from ax.benchmark.noise import GaussianNoise

    from pipeline.hpo.ax_study import ax_seam
    from pipeline.hpo.ax_study.space import load_search_space
    from pipeline.resources import DEFAULT_SEARCH_SPACE

    @dataclass(kw_only=True)
    class Landscape(BenchmarkTestFunction):
        def evaluate_true(self, params):
            morf, lerf = surrogate(params)
            return torch.tensor([[morf], [-lerf]], dtype=torch.float64)

    client = Client()
    load_search_space(DEFAULT_SEARCH_SPACE).configure(client)
    config, metrics = get_moo_opt_config(
        outcome_names=[MORF, NEG_LERF],
        ref_point=[thresholds[MORF], -thresholds[LERF]],
        lower_is_better=True,
        observe_noise_sd=observe_noise,
    )
    return BenchmarkProblem(
        name="demo",
        optimization_config=config,
        num_trials=trials,
        test_function=Landscape(outcome_names=[MORF, NEG_LERF]),
        noise=GaussianNoise(noise_std={MORF: noise[MORF], NEG_LERF: noise[LERF]}),
        optimal_value=optimal,
        baseline_value=0.0,
        opt_config_metrics=metrics,
        search_space=ax_seam.experiment(client).search_space,
    )


def strategy(name: str, seed: int):
    from pipeline.hpo.ax_study import ax_seam

    method = {"uniform random": "uniform", "Sobol only": "random_search"}.get(name, "fast")
    return ax_seam.generation_strategy(method, 5, seed)


def observations(result) -> list[tuple[dict[str, float], float, float]]:
    """(parameters, observed MoRF, observed LeRF) of every trial of a replication."""
    experiment = result.experiment
    frame = experiment.lookup_data().df
    values = {(int(row.trial_index), row.metric_name): float(row.mean) for row in frame.itertuples()}
    return [
        (dict(trial.arm.parameters), values[(index, MORF)], -values[(index, NEG_LERF)])
        for index, trial in sorted(experiment.trials.items())
    ]


def choose(
    rule: str,
    seen: list[tuple[dict[str, float], float, float]],
    surrogate: Surrogate,
    noise: Mapping[str, float],
    generator: np.random.Generator,
) -> dict[str, float]:
    """The point a final-choice rule picks from a replication's observations."""
    from pipeline.hpo.ax_study.records import dominates

    def front(scores: list[tuple[float, float]]) -> list[int]:
        signed = [(-morf, lerf) for morf, lerf in scores]
        return [i for i, s in enumerate(signed) if not any(dominates(o, s) for o in signed)]

    observed = [(morf, lerf) for _, morf, lerf in seen]
    if rule == "predicted":
        x = torch.tensor(
            [features(p["lambda1"], p["lambda2"], p["lambda_area"]) for p, _, _ in seen], dtype=torch.float64
        )
        y = torch.tensor(observed, dtype=torch.float64)
        predicted = list(zip(*(posterior_mean(fit_gp(x, y[:, c]), x).tolist() for c in (0, 1))))
        candidates = front(predicted)
        best = max(candidates, key=lambda i: predicted[i][1] - predicted[i][0])
        return seen[best][0]
    candidates = front(observed)
    ranked = sorted(candidates, key=lambda i: observed[i][1] - observed[i][0], reverse=True)
    if rule == "observed":
        return seen[ranked[0]][0]
    means = {}
    for i in ranked[:RESCORED]:
        morf, lerf = surrogate(seen[i][0])
        again = (morf + generator.normal(0, noise[MORF]), lerf + generator.normal(0, noise[LERF]))
        means[i] = ((observed[i][1] + again[1]) - (observed[i][0] + again[0])) / 2
    return seen[max(means, key=means.get)][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0, help="replay seeds --first-seed .. + --seeds - 1")
    parser.add_argument("--name", default="search_quality", help="the result files' name")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    from ax.benchmark.benchmark import benchmark_replication
    from ax.benchmark.benchmark_method import BenchmarkMethod

    from pipeline.hpo.ax_study import ax_seam

    ax_seam.quiet_ax()
    torch.set_num_threads(1)
    started = time.perf_counter()
    inputs, outputs = read_points(args.results)
    noise = seed_noise(args.results)
    thresholds = json.loads((args.results / "thresholds.json").read_text())["thresholds"]
    loo = leave_one_out(inputs, outputs)
    surrogate = Surrogate(fit_gp(inputs, outputs[:, 0]), fit_gp(inputs, outputs[:, 1]))
    everywhere = [(point, *surrogate(point)) for point in grid()]
    # The search's thresholds, and the landscape's worst observed values: where no point beats the thresholds (the
    # demo's validation LeRF rarely beats the trivial maps'), only the second ranks the methods by hypervolume.
    references = {
        "the search's thresholds": thresholds,
        "the landscape's worst observed values": {MORF: float(outputs[:, 0].max()), LERF: float(outputs[:, 1].min())},
    }
    pairs = [(morf, lerf) for _, morf, lerf in everywhere]
    optimal = {name: hypervolume(pairs, point) for name, point in references.items()}
    best_point, best_morf, best_lerf = max(everywhere, key=lambda item: item[2] - item[1])
    paper_morf, paper_lerf = surrogate(PAPER_POINT)
    print(
        f"{len(inputs)} real trials; leave-one-out {loo}; noise {noise}; thresholds {thresholds}; "
        f"best LeRF − MoRF {best_lerf - best_morf:.4f} at {best_point}",
        flush=True,
    )
    methods = {
        "search, noise inferred (default)": ("search", False),
        "search, SEM given": ("search", True),
        "Sobol only": ("Sobol only", False),
        "uniform random": ("uniform random", False),
    }
    traces: dict[str, dict[str, list[list[float]]]] = {name: {} for name in references}
    chosen: dict[tuple[str, str], list[float]] = {}
    rows = []
    for label, (kind, observe) in methods.items():
        bench = problem(
            surrogate, thresholds, noise, args.trials, observe, max(optimal["the search's thresholds"], 1e-9)
        )
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            method = BenchmarkMethod(name=label, generation_strategy=strategy(kind, seed))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = benchmark_replication(
                    bench,
                    method,
                    seed=seed,
                    strip_runner_before_saving=False,
                    orchestrator_logging_level=logging.WARNING,
                )
            seen = observations(result)
            truth = [surrogate(point) for point, _, _ in seen]
            for reference, point in references.items():
                traces[reference].setdefault(label, []).append(
                    [hypervolume(truth[:n], point) for n in range(1, len(truth) + 1)]
                )
            trace = traces["the landscape's worst observed values"][label][-1]
            generator = np.random.default_rng(seed)
            for rule in RULES:
                point = choose(rule, seen, surrogate, noise, generator)
                morf, lerf = surrogate(point)
                chosen.setdefault((label, rule), []).append(lerf - morf)
                rows.append(
                    {
                        "method": label,
                        "seed": seed,
                        "rule": rule,
                        **point,
                        "true_morf": morf,
                        "true_lerf": lerf,
                        **{f"hypervolume_{n}": trace[min(n, len(trace)) - 1] for n in STEPS},
                    }
                )
            volumes = " / ".join(f"{trace[min(n, len(trace)) - 1]:.4f}" for n in STEPS)
            print(
                f"{label}, seed {seed}: hypervolume {volumes} after {', '.join(map(str, STEPS))} trials "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    paper_volume = {name: hypervolume([(paper_morf, paper_lerf)], point) for name, point in references.items()}
    write_outputs(
        args,
        rows,
        traces,
        chosen,
        loo,
        noise,
        references,
        optimal,
        paper_volume,
        (best_point, best_lerf - best_morf),
        paper_lerf - paper_morf,
        len(inputs),
    )


def quartiles(values: list[float]) -> str:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return f"{median:.4f} [{q1:.4f}, {q3:.4f}]"


def write_outputs(
    args, rows, traces, chosen, loo, noise, references, optimal, paper_volume, best, paper_value, points
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.results.mkdir(parents=True, exist_ok=True)
    with open(args.results / f"{args.name}.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    figure, axes = plt.subplots(1, len(references), figsize=(12, 4.2))
    steps = np.arange(1, args.trials + 1)
    for axis, (name, by_method) in zip(axes, traces.items()):
        for label, runs in by_method.items():
            q1, median, q3 = np.percentile(np.array(runs), [25, 50, 75], axis=0)
            axis.plot(steps, median, label=label)
            axis.fill_between(steps, q1, q3, alpha=0.2)
        axis.axhline(paper_volume[name], color="black", linestyle=":", label="paper's λ's (no search)")
        axis.axhline(optimal[name], color="grey", linestyle="--", label="best possible (surrogate)")
        axis.set_xlabel("trials")
        axis.set_ylabel("hypervolume of true (MoRF, LeRF)")
        axis.set_title(f"reference point: {name}", fontsize=9)
        axis.legend(fontsize=7)
    figure.suptitle(
        f"Replays on the demo surrogate: median and quartiles of seeds {args.first_seed}-"
        f"{args.first_seed + args.seeds - 1}",
        fontsize=10,
    )
    figure.tight_layout()
    (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
    figure.savefig(REPO / "docs" / "images" / f"{args.name}.png", dpi=110)
    commit = described_commit()
    lines = [
        f"Measured {date.today()} at commit {commit} on {platform.node()} ({platform.machine()}): "
        f"`python tests/benchmarks/search_quality.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"Surrogate: one GP per objective fit on {points} real demo trials; leave-one-out RMSE / R²: MoRF "
        f"{loo[MORF]['rmse']:.4f} / {loo[MORF]['r2']:.2f}, LeRF {loo[LERF]['rmse']:.4f} / {loo[LERF]['r2']:.2f}. "
        f"Observation noise (SD between training seeds, measured): MoRF {noise[MORF]:.4f}, LeRF "
        f"{noise[LERF]:.4f}.",
    ]
    for name, point in references.items():
        lines += [
            "",
            f"Hypervolume of the true values of the points evaluated so far, reference point {name} (MoRF ≤ "
            f"{point[MORF]:.4f}, LeRF ≥ {point[LERF]:.4f}; best possible {optimal[name]:.4f}), median "
            f"[quartiles] of {args.seeds} seeds:",
            "",
            "| method | 5 trials | 10 trials | 20 trials |",
            "|---|---:|---:|---:|",
        ]
        for label, runs in traces[name].items():
            values = np.array(runs)
            lines.append(
                f"| {label} | " + " | ".join(quartiles(list(values[:, min(n, args.trials) - 1])) for n in STEPS) + " |"
            )
        volume = paper_volume[name]
        lines.append(f"| paper's λ's (no search) | {volume:.4f} | {volume:.4f} | {volume:.4f} |")
    lines += [
        "",
        f"True LeRF − MoRF of the point each rule chooses after {args.trials} trials (median [quartiles]); "
        f"best in the space {best[1]:.4f} at λ1 {best[0]['lambda1']:.2f}, λ2 {best[0]['lambda2']:.2f}, "
        f"λ_area {best[0]['lambda_area']:g}; the paper's λ's {paper_value:.4f}:",
        "",
        "| method | " + " | ".join(RULES) + " |",
        "|---|" + "---:|" * len(RULES),
    ]
    for label in next(iter(traces.values())):
        lines.append(f"| {label} | " + " | ".join(quartiles(chosen[(label, rule)]) for rule in RULES) + " |")
    text = "\n".join(lines)
    (args.results / f"{args.name}.md").write_text(text + "\n")
    print(f"\n{text}")


if __name__ == "__main__":
    main()
