"""How noisy is a trial's score? Training seeds and ROAD noise draws at fixed λ's, on the demo.

    python tests/benchmarks/trial_noise.py [--seeds 5] [--draws 3] [--out benchmarks/results]

At each of three fixed points (the paper's VGG-16 λ's as the search space holds them, the demo's default, the
config's default) trains a head per training seed, exactly as a search trial does (`train_head` on the demo's
Workbench), scores it at 50 % and 75 % of training (checkpoints, one ROAD draw) and at the end with ``--draws``
ROAD noise draws (``evaluation.seed`` 0, 1, ...) on the whole validation split. Prints, per point and objective
(MoRF, LeRF, LeRF − MoRF), the standard deviation between training seeds (draw 0, what one trial observes) and
between ROAD draws of one head (pooled), at the end and at each checkpoint. Writes every score to
``trial_noise.csv`` and the table to ``trial_noise.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

from pipeline import config as configs  # noqa: E402
from pipeline.evaluation.scoring import evaluate_head, prepare_eval_set  # noqa: E402
from pipeline.metrics.road import road_protocol_of  # noqa: E402
from pipeline.training.checkpoints import Checkpoints  # noqa: E402
from pipeline.training.head_training import Workbench, train_head  # noqa: E402
from tests.benchmarks.reporting import described_commit  # noqa: E402

# (λ1, λ2, λ_area). The paper's VGG-16 run (experiments/paper/tab1_vgg16.yaml: 0.07278, 0.977712, λ3 0.0001,
# λ_area 0.3) lies outside the space: λ1 kept, λ3 kept at 0.0001 by λ2, λ_area the space's nearest value.
POINTS = {"paper VGG-16": (0.07278, 0.92712, 0.5), "demo default": (0.09, 0.91, 1.0), "config default": (0.5, 0.4, 1.0)}
CHECKPOINTS = (50, 75)
OBJECTIVES = ("MoRF", "LeRF", "LeRF − MoRF")


def scores(evaluation) -> dict[str, float]:
    morf, lerf = evaluation.road.morf_auc, evaluation.road.lerf_auc
    return {"MoRF": morf, "LeRF": lerf, "LeRF − MoRF": lerf - morf}


def pooled_sd(groups: list[list[float]]) -> float:
    """The within-group standard deviation pooled over groups of two or more values."""
    usable = [group for group in groups if len(group) > 1]
    squares = sum(sum((value - statistics.mean(group)) ** 2 for value in group) for group in usable)
    return (squares / sum(len(group) - 1 for group in usable)) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    base = configs.load(REPO / "experiments" / "demo.yaml")
    bench = Workbench.load(base)
    val = prepare_eval_set(bench.models.classifier, bench.splits.val, base.evaluation.batch_size)
    rows, started = [], time.perf_counter()
    for name, (lambda1, lambda2, area) in POINTS.items():
        for seed in range(args.seeds):
            config = configs.load(
                REPO / "experiments" / "demo.yaml",
                [
                    f"loss.lambda1={lambda1}",
                    f"loss.lambda2={lambda2}",
                    f"loss.lambda_area={area}",
                    f"train.seed={seed}",
                ],
            )

            def checkpoint(explainer, percentage, step, config=config, seed=seed, name=name):
                rows.append(
                    {
                        "point": name,
                        "seed": seed,
                        "draw": 0,
                        "percent": percentage,
                        **scores(evaluate_head(explainer, val, config.evaluation)[0]),
                    }
                )

            trained = train_head(config, bench, progress=False, checkpoints=Checkpoints(CHECKPOINTS, checkpoint))
            for draw in range(args.draws):
                settings = dataclasses.replace(config.evaluation, seed=draw)
                rows.append(
                    {
                        "point": name,
                        "seed": seed,
                        "draw": draw,
                        "percent": 100,
                        **scores(evaluate_head(trained.explainer, val, settings)[0]),
                    }
                )
            print(
                f"{name}, seed {seed}: "
                + ", ".join(f"{key} {rows[-1][key]:.4f}" for key in OBJECTIVES)
                + f" ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "trial_noise.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    commit = described_commit()
    lines = [
        f"Measured {date.today()} at commit {commit} on {platform.node()} ({platform.machine()}): "
        f"`python tests/benchmarks/trial_noise.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"The demo (`experiments/demo.yaml`), {len(val)} validation views, ROAD: "
        f"{road_protocol_of(base.evaluation)}; {args.seeds} training seeds per point, "
        f"{args.draws} ROAD noise draws of each final head. Standard deviations:",
        "",
        "| point (λ1, λ2, λ_area) | at | objective | mean | SD between seeds | SD between ROAD draws |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, point in POINTS.items():
        for percent in (*CHECKPOINTS, 100):
            for objective in OBJECTIVES:
                first = [
                    row[objective]
                    for row in rows
                    if row["point"] == name and row["percent"] == percent and row["draw"] == 0
                ]
                draws = [
                    [
                        row[objective]
                        for row in rows
                        if row["point"] == name and row["percent"] == percent and row["seed"] == seed
                    ]
                    for seed in range(args.seeds)
                ]
                within = f"{pooled_sd(draws):.4f}" if percent == 100 and args.draws > 1 else "–"
                lines.append(
                    f"| {name} {point} | {'end' if percent == 100 else f'{percent} %'} | {objective} | "
                    f"{statistics.mean(first):.4f} | {statistics.stdev(first):.4f} | {within} |"
                )
    text = "\n".join(lines)
    (args.out / "trial_noise.md").write_text(text + "\n")
    print(f"\n{text}")


if __name__ == "__main__":
    main()
