"""A demo search of one commit against the same search of an earlier commit, alternated in one run.

    python tests/benchmarks/demo_search_pair.py --before 83694fe [--after HEAD] [--pairs 3] [--trials 3]
        [--before-set KEY=VALUE ...] [--out FILE.md]

Runs ``python -m pipeline.search --experiment experiments/demo.yaml --trials N`` of the commits ``--before`` and
``--after`` (temporary git worktrees, so uncommitted changes take no part) in turn, B A B A ..., each in a fresh
folder with its own SQLite
MLflow store, and prints per side: the median seconds of a trial (from the console's trial lines), the search's
wall and CPU seconds and peak RSS (the process's own accounting), and the ratios before / after of the medians.
Then whether the two sides scored alike: every trial's MoRF/LeRF as the console prints them, the reference maps'
scores and the final head's validation and test metrics (full precision, seconds left out).

``--before-set`` hands ``--set KEY=VALUE`` to the earlier commit's searches only: e.g. the earlier demo's size of
today's, where the demo's defaults changed between the two commits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

from tests.benchmarks.reporting import described_commit, publish  # noqa: E402

TRIAL_LINE = re.compile(r"^trial +(\d+) .*-> MoRF ([\d.]+) LeRF ([\d.]+).*\((\d+) s\)$", re.MULTILINE)


@dataclass
class Run:
    """One search: its trial seconds, scores and whole-process figures."""

    trial_seconds: list[float]
    trial_scores: list[tuple[str, str, str]]
    trial_run_seconds: list[float]  # the trial runs' durations in MLflow (start to end, to the millisecond)
    scores: dict
    wall: float
    cpu: float
    peak_rss_mib: float


@dataclass
class Side:
    name: str
    checkout: Path
    runs: list[Run] = field(default_factory=list)

    def median(self, figure: str) -> float:
        if figure in ("trial", "trial_run"):
            attribute = "trial_seconds" if figure == "trial" else "trial_run_seconds"
            return statistics.median(s for run in self.runs for s in getattr(run, attribute))
        return statistics.median(getattr(run, figure) for run in self.runs)


def without_seconds(metrics: dict) -> dict:
    """Scores only: no timing keys, at any depth."""
    return {
        key: without_seconds(value) if isinstance(value, dict) else value
        for key, value in metrics.items()
        if "seconds" not in key and key not in ("compile_seconds", "train_images_per_second")
    }


def run_search(checkout: Path, trials: int, folder: Path, overrides: list[str]) -> Run:
    """Run the demo search of ``checkout`` in ``folder`` (its working directory, so MLflow's artifacts land there),
    with ``--set`` for each of ``overrides``."""
    command = [
        sys.executable,
        "-m",
        "pipeline.search",
        "--experiment",
        str(checkout / "experiments" / "demo.yaml"),
        "--trials",
        str(trials),
        "--name",
        "pair",
        "--out",
        str(folder / "runs"),
        "--no-progress",
        "--tracking-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        *(word for override in overrides for word in ("--set", override)),
    ]
    environment = os.environ | {"PYTHONPATH": str(checkout)}
    started = time.perf_counter()
    with open(folder / "console.log", "w") as log:
        process = subprocess.Popen(command, cwd=folder, env=environment, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    output = (folder / "console.log").read_text()
    if status != 0:
        raise SystemExit(f"the search in {checkout} failed:\n{output[-3000:]}")
    lines = TRIAL_LINE.findall(output)
    search = folder / "runs" / "pair"
    state, metrics = (json.loads((search / name).read_text()) for name in ("state.json", "metrics.json"))
    scores = {"reference maps": state["reference_maps"], "final": without_seconds(metrics)}
    return Run(
        [float(s) for *_, s in lines],
        [(i, morf, lerf) for i, morf, lerf, _ in lines],
        trial_run_seconds(folder / "mlflow.db"),
        scores,
        wall,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
    )


def trial_run_seconds(database: Path) -> list[float]:
    """Each trial run's duration in the search's MLflow store (runs named trial-NNN), in trial order."""
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT name, end_time - start_time FROM runs WHERE name LIKE 'trial-%' ORDER BY name"
        ).fetchall()
    return [milliseconds / 1000 for _, milliseconds in rows]


def score_differences(before: Side, after: Side) -> list[str]:
    """The first run of each side, trial by trial, and the largest difference of every final metric."""
    lines = ["", "| trial | MoRF before | MoRF after | LeRF before | LeRF after |", "|---:|---:|---:|---:|---:|"]
    for (index, morf_b, lerf_b), (_, morf_a, lerf_a) in zip(before.runs[0].trial_scores, after.runs[0].trial_scores):
        lines.append(f"| {index} | {morf_b} | {morf_a} | {lerf_b} | {lerf_a} |")
    first_before, first_after = flat(before.runs[0].scores["final"]), flat(after.runs[0].scores["final"])
    differences = {
        key: abs(value - first_after[key])
        for key, value in first_before.items()
        if isinstance(value, float) and isinstance(first_after.get(key), float)
    }
    largest = sorted(differences.items(), key=lambda item: -item[1])[:5]
    lines += [
        "",
        "Largest differences of the final head's metrics (first runs): "
        + ", ".join(f"{key} {value:.4f}" for key, value in largest),
    ]
    return lines


def flat(metrics: dict, prefix: str = "") -> dict:
    """Every number of a nested metrics dict, keyed by its dotted path."""
    found: dict = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            found |= flat(value, f"{prefix}{key}.")
        else:
            found[f"{prefix}{key}"] = value
    return found


def commit(checkout: Path) -> str:
    return described_commit(checkout)


def report(before: Side, after: Side, trials: int, command: str) -> str:
    lines = [
        f"Measured {date.today()} on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs): `{command}`",
        "",
        f"Demo search, {trials} trials and the final head, {len(after.runs)} runs per side, alternated.",
        "",
        "| | before | after | before / after |",
        "|---|---:|---:|---:|",
    ]
    for label, figure in (
        ("trial, median s (console)", "trial"),
        ("trial, median s (MLflow run)", "trial_run"),
        ("search wall, median s", "wall"),
        ("search CPU, median s", "cpu"),
        ("peak RSS, median MiB", "peak_rss_mib"),
    ):
        b, a = before.median(figure), after.median(figure)
        lines.append(f"| {label} | {b:.1f} | {a:.1f} | {b / a:.2f} |")
    lines.append(f"| commit | {commit(before.checkout)} | {commit(after.checkout)} | |")
    same_trials = all(run.trial_scores == before.runs[0].trial_scores for run in before.runs + after.runs)
    same_within = [all(run.scores == side.runs[0].scores for run in side.runs) for side in (before, after)]
    same_scores = all(run.scores == before.runs[0].scores for run in before.runs + after.runs)
    lines += [
        "",
        f"Trial scores (MoRF, LeRF as printed) identical in every run of both sides: {same_trials}.",
        "Reference maps' scores and the final head's validation and test metrics identical at full precision "
        f"in every run of both sides: {same_scores}.",
    ]
    if not same_scores:
        lines.append(
            f"Within each side, every run identical at full precision: before {same_within[0]}, after {same_within[1]}."
        )
        lines += score_differences(before, after)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--after", default="HEAD", help="the later commit (default HEAD)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument(
        "--before-set", action="append", default=[], metavar="KEY=VALUE", help="--set for the earlier commit only"
    )
    parser.add_argument("--out", type=Path, help="also write the result as Markdown here")
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with tempfile.TemporaryDirectory() as scratch:
        sides = [Side(name, Path(scratch) / name) for name in ("before", "after")]
        for side, revision in zip(sides, (args.before, args.after)):
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(side.checkout), revision],
                cwd=REPO,
                check=True,
                capture_output=True,
            )
        try:
            for pair in range(args.pairs):
                for side in sides:
                    folder = Path(scratch) / f"{side.name}-{pair}"
                    folder.mkdir()
                    overrides = args.before_set if side.name == "before" else []
                    run = run_search(side.checkout, args.trials, folder, overrides)
                    side.runs.append(run)
                    print(
                        f"{side.name} {pair}: trials {run.trial_seconds} s, wall {run.wall:.0f} s, "
                        f"peak RSS {run.peak_rss_mib:.0f} MiB",
                        flush=True,
                    )
            command = "python tests/benchmarks/demo_search_pair.py " + " ".join(sys.argv[1:])
            text = report(*sides, args.trials, command.strip())
        finally:
            for side in sides:
                subprocess.run(["git", "worktree", "remove", "--force", str(side.checkout)], cwd=REPO, check=False)
    print()
    publish(text, args.out)


if __name__ == "__main__":
    main()
