"""Where a demo search spends its wall time: the unavoidable work vs everything around it.

    python tests/benchmarks/search_overhead.py [--trials 20] [--set key=value ...]

Runs a real offline demo search (EfficientNet-Lite models, bundled photos, MLflow on a temporary SQLite
store) with timers around the training steps (forward, backward, optimiser) and the evaluation (head maps,
imputation, ROAD and AD/IC forwards). Everything else (Ax generation, MLflow logging, plots, setup, model
and data loading, the data loader) is overhead; the script prints the breakdown and the overhead share.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from functools import wraps
from pathlib import Path

from pipeline import config as configs
from pipeline.hpo import driver
from pipeline.hpo.ax_study.space import load_search_space
from pipeline.hpo.ax_study.study import Study
from pipeline.hpo.driver import Search, SearchOptions
from pipeline.hpo.outputs import final_head
from pipeline.hpo.trials import trial_worker
from pipeline.resources import DEFAULT_SEARCH_SPACE
from pipeline.tracking.runs import RunLog, Tracker
from pipeline.training import loop

REPO = Path(__file__).resolve().parents[2]
spent: dict[str, float] = defaultdict(float)
LOGGING = "MLflow logging and plots of trials"


def timed(owner, name: str, label: str) -> None:
    original = getattr(owner, name)

    @wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[label] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    timed(loop, "optimisation_step", "training steps")
    for module in (trial_worker, final_head):  # the search's trials; the final head
        timed(module, "evaluate_head", "evaluation (maps, imputation, forwards)")
    for module in (driver, final_head):  # the validation set; the test set
        timed(module, "prepare_eval_set", "evaluation (maps, imputation, forwards)")
    timed(Study, "next_trial", "Ax generation")
    for name in ("start_trial", "log_search_metrics"):
        timed(Tracker, name, LOGGING)
    for name in ("log_step", "log_metrics", "log_artifact", "set_tags", "finish"):
        timed(RunLog, name, LOGGING)
    for module in (trial_worker, final_head):
        timed(module, "grid_and_curve", LOGGING)
    base = configs.apply_overrides(configs.read_yaml(REPO / "experiments" / "demo.yaml"), args.overrides)
    with tempfile.TemporaryDirectory() as folder:
        options = SearchOptions(
            name="overhead",
            trials=args.trials,
            base=base,
            space=load_search_space(DEFAULT_SEARCH_SPACE),
            space_path=DEFAULT_SEARCH_SPACE,
            seed=12345,
            directory=Path(folder) / "search",
            tracking_uri=f"sqlite:///{folder}/mlflow.db",
            progress=False,
        )
        started = time.perf_counter()
        Search(options).run()
        total = time.perf_counter() - started
    work = spent["training steps"] + spent["evaluation (maps, imputation, forwards)"]
    other = total - work - spent["Ax generation"] - spent[LOGGING]
    print(f"\ndemo search, {args.trials} trials + final head: {total:.0f} s wall ({total / 60:.1f} min)")
    for label, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"  {label:42s} {seconds:8.1f} s  {100 * seconds / total:5.1f}%")
    print(f"  {'other (setup, data loading, final run, analyses)':42s} {other:8.1f} s  {100 * other / total:5.1f}%")
    trial_time = work + spent[LOGGING]
    share = 100 * spent[LOGGING] / (trial_time - spent[LOGGING])
    print(f"MLflow logging and plots add {share:.1f}% to the trials' work")
    print(f"overhead share (everything but training steps and evaluation): {100 * (1 - work / total):.1f}%")


if __name__ == "__main__":
    main()
