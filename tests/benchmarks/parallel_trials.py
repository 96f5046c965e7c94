"""Parallel demo trials on Ray against one at a time in the search process, side by side in one run.

    python tests/benchmarks/parallel_trials.py [--trials 4] [--parallel 2] [--set key=value ...]

Runs the trials of a real offline demo search (EfficientNet-Lite models, bundled photos, MLflow on a
temporary SQLite store) with ``--parallel 1`` (in process) and ``--parallel N`` (a local Ray instance
started here, one worker per slot), in the order 1, N, N, 1 so that a machine whose load drifts during
the run weighs on both alike. Prints Ray's start-up (``ray.init`` and the workers loading the models and
data), what each trial costs around its work (Ax generation, starting its MLflow run, the Ray round trip
beyond the worker's own work, recording the result), and the wall time of the trials: each figure is
the mean of the mode's two runs, and the speed-up is also given for each adjacent pair. The final head
is not trained: it is the same in both modes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from search_overhead import spent, timed  # noqa: E402  (this folder; spent: label -> seconds in all calls)

from pipeline import config as configs  # noqa: E402
from pipeline.hpo.ax_study.space import load_search_space
from pipeline.hpo.ax_study.study import Study
from pipeline.hpo.ax_study.trial_state import TrialState  # noqa: E402
from pipeline.hpo.driver import Search, SearchOptions
from pipeline.hpo.outputs.trial_table import study_table
from pipeline.hpo.trials import ray_pool as parallel
from pipeline.hpo.trials.pools import InProcessPool
from pipeline.hpo.trials.ray_pool import RayPool
from pipeline.resources import DEFAULT_SEARCH_SPACE
from pipeline.tracking.runs import RunLog, Tracker

REPO = Path(__file__).resolve().parents[2]
moments: dict[str, dict[int, float]] = defaultdict(dict)  # "submitted"/"collected" -> trial -> perf_counter
work: dict[int, float] = {}  # trial -> seconds of work inside its worker


def watch_round_trips() -> None:
    """Note when each trial is handed to a worker, when its result is back, and the worker's own seconds."""
    submit, collect, wait = RayPool.submit, RayPool._collect, InProcessPool.wait

    def submitted(pool, index, *args, **kwargs):
        moments["submitted"][index] = time.perf_counter()
        return submit(pool, index, *args, **kwargs)

    def collected(pool, reference):
        finished = collect(pool, reference)
        moments["collected"][finished.index] = time.perf_counter()
        work[finished.index] = finished.result.seconds if finished.result else float("nan")
        return finished

    def waited(pool):
        index = pool._job[0]
        moments["submitted"][index] = time.perf_counter()
        [finished] = wait(pool)
        moments["collected"][index] = time.perf_counter()
        work[index] = finished.result.seconds if finished.result else float("nan")
        return [finished]

    RayPool.submit, RayPool._collect, InProcessPool.wait = submitted, collected, waited


def instrument() -> None:
    timed(parallel, "connect", "ray.init")
    timed(Study, "next_trial", "Ax generation")
    timed(Tracker, "start_trial", "start MLflow run")
    timed(RunLog, "set_tags", "start MLflow run")
    timed(Search, "_settle", "record result (MLflow, PNGs, Ax, snapshot)")
    watch_round_trips()


def run_trials(base: dict, trials: int, parallel_trials: int, folder: Path) -> dict[str, float]:
    """Open a fresh search and run its trials; returns the figures of this mode."""
    spent.clear()
    moments.clear()
    work.clear()
    options = SearchOptions(
        name=f"parallel-{parallel_trials}",
        trials=trials,
        base=base,
        space=load_search_space(DEFAULT_SEARCH_SPACE),
        space_path=DEFAULT_SEARCH_SPACE,
        seed=12345,
        directory=folder / "search",
        tracking_uri=f"sqlite:///{folder}/mlflow.db",
        progress=False,
        parallel=parallel_trials,
    )
    search = Search(options)
    search.open()
    started = time.perf_counter()
    search.run_trials()
    wall = time.perf_counter() - started
    completed = [r.index for r in search.study.records() if r.status is TrialState.COMPLETED]
    assert len(completed) == trials, study_table(search.study)
    round_trips = [moments["collected"][i] - moments["submitted"][i] for i in completed]
    dispatch = [trip - work[i] for trip, i in zip(round_trips, completed)]
    first_submit = min(moments["submitted"].values())
    per_trial = len(completed)  # each of these steps runs once per trial here (no trial failed or waited)
    figures = {
        "wall time of the trials (s)": wall,
        "  before the first trial starts (s)": first_submit - started,
        "  from the first trial started (s)": wall - (first_submit - started),
        "ray.init (s)": spent["ray.init"],
        "workers created and loaded (s)": first_submit - started - spent["ray.init"],
        "trial work inside its worker, mean (s)": statistics.mean(work[i] for i in completed),
        "Ax generation per trial, mean (s)": spent["Ax generation"] / per_trial,
        "start MLflow run per trial, mean (s)": spent["start MLflow run"] / per_trial,
        "dispatch: round trip - work, mean (s)": statistics.mean(dispatch),
        "record result per trial, mean (s)": spent["record result (MLflow, PNGs, Ax, snapshot)"] / per_trial,
    }
    overhead = (
        figures["start MLflow run per trial, mean (s)"]
        + figures["dispatch: round trip - work, mean (s)"]
        + figures["record result per trial, mean (s)"]
    )
    figures["dispatch + logging per trial (s)"] = overhead
    figures["  as % of a trial's work"] = 100 * overhead / figures["trial work inside its worker, mean (s)"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    base = configs.apply_overrides(configs.read_yaml(REPO / "experiments" / "demo.yaml"), args.overrides)
    instrument()
    order = (1, args.parallel, args.parallel, 1)
    runs = []
    for parallel_trials in order:
        with tempfile.TemporaryDirectory() as folder:
            runs.append(run_trials(base, args.trials, parallel_trials, Path(folder)))
    one = {label: statistics.mean((runs[0][label], runs[3][label])) for label in runs[0]}
    many = {label: statistics.mean((runs[1][label], runs[2][label])) for label in runs[0]}
    print(
        f"\n{args.trials} demo trials on {os.cpu_count()} CPU cores (no GPU), --parallel 1 vs {args.parallel}, "
        f"runs in the order {', '.join(map(str, order))}; means of each mode's two runs"
    )
    print(f"{'':44s} {'--parallel 1':>14s} {f'--parallel {args.parallel}':>14s}")
    for label in one:
        print(f"{label:44s} {one[label]:14.2f} {many[label]:14.2f}")
    wall, before = "wall time of the trials (s)", "  before the first trial starts (s)"
    pairs = [(runs[0], runs[1]), (runs[3], runs[2])]
    print(
        f"speed-up of --parallel {args.parallel} (pair 1, pair 2): "
        + ", ".join(f"{a[wall] / b[wall]:.2f}x" for a, b in pairs)
        + " with Ray's start-up; "
        + ", ".join(f"{a[wall] / (b[wall] - b[before]):.2f}x" for a, b in pairs)
        + " from the first trial"
    )


if __name__ == "__main__":
    main()
