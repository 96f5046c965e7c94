"""The replays confirmed by real runs: one real demo search per method, and the paper's λ's, scored on held-out test.

    python tests/benchmarks/search_confirm.py [--trials 20] [--results benchmarks/results]

Runs ``python -m pipeline.search --experiment experiments/demo.yaml --trials N`` with the paper's space as
`pipeline.search` configures it, then with the same space searched by Sobol only (``method: random_search``) and by
uniform random points (``method: uniform``), and trains and evaluates a head at the paper's fixed λ's
(`pipeline.train`, `pipeline.evaluate --split test`). For each: the chosen λ's, the validation and held-out test
LeRF − MoRF, and the surrogate's (`search_quality.py`) LeRF − MoRF at the chosen λ's. Writes
``search_confirm.md`` and ``search_confirm.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

from search_quality import LERF, MORF, PAPER_POINT, Surrogate, fit_gp, read_points  # noqa: E402

from tests.benchmarks.reporting import described_commit  # noqa: E402

METHODS = {"search (default)": None, "Sobol only": "random_search", "uniform random": "uniform"}


def run(command: list[str], log: Path, cwd: Path) -> None:
    print("$", " ".join(command), flush=True)
    with open(log, "w") as file:
        if subprocess.run(
            command, cwd=cwd, stdout=file, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONPATH": str(REPO)}
        ).returncode:
            raise SystemExit(f"failed: {' '.join(command)}; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    inputs, outputs = read_points(args.results)
    surrogate = Surrogate(fit_gp(inputs, outputs[:, 0]), fit_gp(inputs, outputs[:, 1]))
    space = (REPO / "search_spaces" / "ptame.yaml").read_text()
    demo = str(REPO / "experiments" / "demo.yaml")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for label, method in METHODS.items():
            started = time.perf_counter()
            name = label.split()[0].lower()
            space_file = folder / f"{name}.yaml"
            space_file.write_text(space if method is None else space.replace("method: fast", f"method: {method}"))
            run(
                [
                    sys.executable,
                    "-m",
                    "pipeline.search",
                    "--experiment",
                    demo,
                    "--space",
                    str(space_file),
                    "--trials",
                    str(args.trials),
                    "--name",
                    name,
                    "--out",
                    str(folder / "runs"),
                    "--no-progress",
                    "--tracking-uri",
                    f"sqlite:///{folder / 'mlflow.db'}",
                ],
                folder / f"{name}.log",
                folder,
            )
            report = json.loads((folder / "runs" / name / "metrics.json").read_text())
            test = report["test"]["metrics"]
            parameters = report["parameters"]
            morf, lerf = surrogate(parameters)
            rows.append(
                {
                    "method": label,
                    **{k: parameters[k] for k in PAPER_POINT},
                    "rule": report["choice"]["rule"],
                    "validation_trade_off": report["validation"][LERF] - report["validation"][MORF],
                    "test_trade_off": test[LERF] - test[MORF],
                    "test_class_coverage": test.get("class_coverage"),
                    "surrogate_trade_off": lerf - morf,
                    "seconds": time.perf_counter() - started,
                }
            )
            print(rows[-1], flush=True)
        head = folder / "paper-head"
        run(
            [
                sys.executable,
                "-m",
                "pipeline.train",
                "--experiment",
                demo,
                "--out",
                str(head),
                "--no-progress",
                *[f"--set=loss.{key}={value}" for key, value in PAPER_POINT.items()],
            ],
            folder / "paper.log",
            folder,
        )
        for split in ("val", "test"):
            run(
                [
                    sys.executable,
                    "-m",
                    "pipeline.evaluate",
                    "--head",
                    str(head),
                    "--split",
                    split,
                    "--out",
                    str(folder / f"paper-{split}.json"),
                ],
                folder / f"paper-{split}.log",
                folder,
            )
        scores = {
            split: json.loads((folder / f"paper-{split}.json").read_text())["metrics"] for split in ("val", "test")
        }
        morf, lerf = surrogate(PAPER_POINT)
        rows.append(
            {
                "method": "paper's λ's (no search)",
                **PAPER_POINT,
                "rule": "-",
                "validation_trade_off": scores["val"][LERF] - scores["val"][MORF],
                "test_trade_off": scores["test"][LERF] - scores["test"][MORF],
                "test_class_coverage": scores["test"].get("class_coverage"),
                "surrogate_trade_off": lerf - morf,
                "seconds": 0.0,
            }
        )
    args.results.mkdir(parents=True, exist_ok=True)
    with open(args.results / "search_confirm.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    commit = described_commit()
    lines = [
        f"Measured {date.today()} at commit {commit} on {platform.node()} ({platform.machine()}): "
        f"`python tests/benchmarks/search_confirm.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"One real demo search of {args.trials} trials per method (LeRF − MoRF, ROAD as `experiments/demo.yaml`):",
        "",
        "| method | chosen λ1, λ2, λ_area | rule | validation | held-out test (coverage) | surrogate |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in rows:
        coverage = "" if row["test_class_coverage"] is None else f" ({row['test_class_coverage']:.2f})"
        lines.append(
            f"| {row['method']} | {row['lambda1']:.3f}, {row['lambda2']:.3f}, {row['lambda_area']:g} | "
            f"{row['rule']} | {row['validation_trade_off']:.4f} | {row['test_trade_off']:.4f}{coverage} | "
            f"{row['surrogate_trade_off']:.4f} |"
        )
    text = "\n".join(lines)
    (args.results / "search_confirm.md").write_text(text + "\n")
    print(f"\n{text}")


if __name__ == "__main__":
    main()
