"""Does early stopping pay? Checkpoint scores against final scores over a whole search, and the rule replayed.

    python tests/benchmarks/early_stopping.py [--trials 20] [--set key=value ...] [--out DIR]
    python tests/benchmarks/early_stopping.py --folder DIR/search/NAME     # analyse a search already run

Runs the demo search (`experiments/demo.yaml`, or what ``--set`` changes) with its checkpoints and no stopping,
then prints: Kendall's τ between each checkpoint's scores and the final scores, per objective, over the completed
trials; the checkpoints' cost; and, for each number of dominating trials the rule could ask for, the trials it
would have stopped (replayed in index order on the recorded curves, `pipeline.hpo.ax_study.early_stopping.replay`), the
share of training and of trial time saved, and whether the chosen trial would change. Last, what the same stopping
would save in a 20-trial search (5 Sobol trials, one epoch each) such as the paper's.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from scipy.stats import kendalltau

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

from pipeline.hpo.ax_study.choice import choose_trial
from pipeline.hpo.ax_study.early_stopping import INITIAL_DESIGN, replay
from pipeline.hpo.ax_study.records import TrialRecord
from pipeline.hpo.ax_study.study import Study
from pipeline.hpo.ax_study.trial_state import TrialState  # noqa: E402
from pipeline.hpo.outputs.folder import SearchFolder

LABELS = {"road_morf_auc": "MoRF", "road_lerf_auc": "LeRF"}
PAPER_TRIALS, PAPER_SOBOL = 20, 5


def run_search(trials: int, overrides: list[str], out: Path) -> Path:
    """Run the demo search command with checkpoints and without stopping; returns its folder."""
    command = [
        sys.executable,
        "-m",
        "pipeline.search",
        "--experiment",
        "experiments/demo.yaml",
        "--trials",
        str(trials),
        "--name",
        "early-stopping",
        "--out",
        str(out / "search"),
        "--no-progress",
        "--tracking-uri",
        f"sqlite:///{out / 'mlflow.db'}",
        "--set",
        "checkpoints.early_stop=false",
    ]
    for override in overrides:
        command += ["--set", override]
    print("$", " ".join(command), flush=True)
    with open(out / "search.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            print(line, end="", flush=True)
            log.write(line)
    if process.wait():
        raise SystemExit(f"the search failed (exit {process.returncode}); see {out / 'search.log'}")
    return out / "search" / "early-stopping"


def trial_seconds(record: TrialRecord) -> float:
    """A trial's work: training, its checkpoints and the final scoring."""
    metrics = record.metrics
    return metrics["train_seconds"] + metrics["checkpoint_seconds"] + metrics["eval_seconds"]


def saved_seconds(record: TrialRecord, percentage: int) -> float:
    """What stopping ``record`` at ``percentage`` would have saved: the rest of its training, the later
    checkpoints and the final scoring."""
    later = sum(scores["seconds"] for at, scores in record.checkpoints.items() if at > percentage)
    return (1 - percentage / 100) * record.metrics["train_seconds"] + later + record.metrics["eval_seconds"]


def report(folder: Path) -> None:
    search = SearchFolder(folder)
    space = search.space()
    signs = space.objective_signs
    records = [r for r in Study.read(folder, space).records() if r.status is TrialState.COMPLETED]
    percentages = sorted({p for r in records for p in r.checkpoints})
    print(f"\n{len(records)} completed trials in {folder}; checkpoints at {percentages} % of training")
    print("\nKendall's τ between checkpoint and final scores (p-value):")
    print("checkpoint  " + "  ".join(f"{LABELS.get(name, name):>16s}" for name in signs))
    for percentage in percentages:
        scored = [r for r in records if percentage in r.checkpoints]
        cells = []
        for name in signs:
            tau = kendalltau([r.checkpoints[percentage][name] for r in scored], [r.metrics[name] for r in scored])
            cells.append(f"{tau.statistic:+.3f} ({tau.pvalue:.3f})")
        print(f"{percentage:>9d} %  " + "  ".join(f"{cell:>16s}" for cell in cells))
    noise = {
        name: statistics.median(r.checkpoints[p][f"{name}_se"] for r in records for p in r.checkpoints)
        for name in signs
    }
    print(
        "median noise (standard error) of a checkpoint score: "
        + ", ".join(f"{LABELS.get(name, name)} {value:.4f}" for name, value in noise.items())
    )

    total = sum(trial_seconds(r) for r in records)
    checkpoint_cost = sum(r.metrics["checkpoint_seconds"] for r in records)
    medians = {
        name: statistics.median(r.metrics[name] for r in records)
        for name in ("checkpoint_seconds", "train_seconds", "eval_seconds")
    }
    print(
        f"\ntrial work (training + checkpoints + final scoring): {total:.0f} s in all, median "
        f"{statistics.median(trial_seconds(r) for r in records):.1f} s a trial; checkpoints {checkpoint_cost:.0f} s "
        f"({checkpoint_cost / total:.1%}), median {medians['checkpoint_seconds']:.1f} s a trial; training median "
        f"{medians['train_seconds']:.1f} s, final scoring median {medians['eval_seconds']:.1f} s"
    )

    chosen = choose_trial(records, signs)
    later = [r for r in records if r.generator != INITIAL_DESIGN]
    print(f"\nchosen trial without stopping: {chosen.index}; trials after the initial design: {len(later)}")
    print("rule (dominating)  stopped (trial@%)              training saved  trial time saved  chosen trial")
    for dominating in (1, 2, 3):
        stopped = replay(records, signs, dominating)
        steps = sum(1 - p / 100 for p in stopped.values()) / len(records)
        seconds = sum(saved_seconds(r, stopped[r.index]) for r in records if r.index in stopped) / total
        kept = [r for r in records if r.index not in stopped]
        now = choose_trial(kept, signs).index
        listed = ", ".join(f"{index}@{p}" for index, p in stopped.items()) or "none"
        print(
            f"{dominating:>17d}  {len(stopped):>2d}: {listed:27s}  {steps:>14.1%}  {seconds:>16.1%}  "
            f"{now} ({'unchanged' if now == chosen.index else 'CHANGED'})"
        )
        share = len(stopped) / len(later) if later else 0.0
        kept_fraction = statistics.mean(p / 100 for p in stopped.values()) if stopped else 1.0
        saved = (PAPER_TRIALS - PAPER_SOBOL) * share * (1 - kept_fraction)
        print(
            f"{'':17s}  paper scale: {PAPER_TRIALS - PAPER_SOBOL} BoTorch trials x {share:.2f} stopped x "
            f"{1 - kept_fraction:.2f} of an epoch = {saved:.2f} of {PAPER_TRIALS} one-epoch trainings "
            f"({saved / PAPER_TRIALS:.1%})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--out", type=Path, help="where the search and its MLflow store go (default: a temporary folder, kept)"
    )
    parser.add_argument("--folder", type=Path, help="analyse this search folder instead of running one")
    args = parser.parse_args()
    if args.folder is None:
        out = args.out or Path(tempfile.mkdtemp(prefix="early-stopping-"))
        out.mkdir(parents=True, exist_ok=True)
        args.folder = run_search(args.trials, args.overrides, out)
    report(args.folder)


if __name__ == "__main__":
    main()
