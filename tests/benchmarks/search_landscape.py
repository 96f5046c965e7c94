"""The demo's landscape: real trials spread over the search space, for the replays of `search_quality.py`.

    python tests/benchmarks/search_landscape.py [--points 60] [--out benchmarks/results/landscape.csv]

Trains and scores one head per point, exactly as a search trial does (`TrialWorker.run` on the demo's models and
validation split, the config's training seed), at ``--points`` scrambled-Sobol points over the paper's space (λ1, λ2
on the simplex λ1 + λ2 ≤ 1, λ_area ∈ {0.5, 1, 2}). Appends one CSV row per trial (parameters, MoRF, LeRF, seed,
commit, command, date, machine); a rerun skips the points already in the file, so an interrupted run resumes.
Beside it, ``thresholds.json``: the objective thresholds a demo search sets (the worse trivial map per objective on
the validation split, `pipeline.hpo.driver`), the replays' reference point.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

from pipeline import config as configs  # noqa: E402
from pipeline.evaluation.scoring import evaluate_maps, reference_maker  # noqa: E402
from pipeline.hpo.ax_study.study import objective_thresholds  # noqa: E402
from pipeline.hpo.driver import REFERENCE_MAPS  # noqa: E402
from pipeline.hpo.trials.trial_worker import TrialWorker  # noqa: E402
from tests.benchmarks.reporting import described_commit  # noqa: E402

AREAS = (0.5, 1.0, 2.0)
FIELDS = [
    "point",
    "lambda1",
    "lambda2",
    "lambda_area",
    "road_morf_auc",
    "road_lerf_auc",
    "seed",
    "commit",
    "command",
    "date",
    "machine",
]


def sobol_points(count: int, seed: int = 0) -> list[tuple[float, float, float]]:
    """``count`` points of a scrambled Sobol sequence over [0, 1]^3, mapped to (λ1, λ2, λ_area): a point beyond the
    simplex is reflected into it (λ1, λ2 → 1 − λ1, 1 − λ2), the third coordinate picks λ_area."""
    engine = torch.quasirandom.SobolEngine(3, scramble=True, seed=seed)
    points = []
    for u1, u2, u3 in engine.draw(count).tolist():
        if u1 + u2 > 1:
            u1, u2 = 1 - u1, 1 - u2
        points.append((round(u1, 6), round(u2, 6), AREAS[min(int(u3 * len(AREAS)), len(AREAS) - 1)]))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=60)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "landscape.csv")
    args = parser.parse_args()
    done = set()
    if args.out.is_file():
        with open(args.out) as file:
            done = {int(row["point"]) for row in csv.DictReader(file)}
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as file:
            csv.DictWriter(file, fieldnames=FIELDS).writeheader()
    commit = described_commit()
    command = f"python tests/benchmarks/search_landscape.py {' '.join(sys.argv[1:])}".strip()
    base = configs.load(REPO / "experiments" / "demo.yaml")
    worker = TrialWorker.load(base)
    thresholds = args.out.parent / "thresholds.json"
    if not thresholds.is_file():
        classifier = worker.bench.models.classifier
        references = {
            label: evaluate_maps(
                classifier, worker.val_set, reference_maker(kind, base.evaluation.seed), base.evaluation
            )[0].road.metrics()
            for kind, label in REFERENCE_MAPS.items()
        }
        signs = {"road_morf_auc": -1.0, "road_lerf_auc": 1.0}
        thresholds.write_text(
            json.dumps(
                {
                    "thresholds": objective_thresholds(references, signs),
                    "references": references,
                    "commit": commit,
                    "date": str(date.today()),
                },
                indent=1,
            )
        )
    started = time.perf_counter()
    for index, (lambda1, lambda2, area) in enumerate(sobol_points(args.points)):
        if index in done:
            continue
        config = configs.load(
            REPO / "experiments" / "demo.yaml",
            [f"loss.lambda1={lambda1}", f"loss.lambda2={lambda2}", f"loss.lambda_area={area}"],
        )
        result = worker.run(index, config)
        row = {
            "point": index,
            "lambda1": lambda1,
            "lambda2": lambda2,
            "lambda_area": area,
            "road_morf_auc": result.metrics["road_morf_auc"],
            "road_lerf_auc": result.metrics["road_lerf_auc"],
            "seed": config.train.seed,
            "commit": commit,
            "command": command,
            "date": str(date.today()),
            "machine": f"{platform.node()} ({platform.machine()}, {torch.get_num_threads()} threads)",
        }
        with open(args.out, "a", newline="") as file:
            csv.DictWriter(file, fieldnames=FIELDS).writerow(row)
        print(
            f"point {index}: λ = ({lambda1:.3f}, {lambda2:.3f}, {area}) -> MoRF {row['road_morf_auc']:.4f} "
            f"LeRF {row['road_lerf_auc']:.4f} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
