"""Where one demo trial spends its time, part by part.

    python tests/benchmarks/trial_profile.py [--trials 3] [--set key=value ...] [--out FILE.md]

Runs a real offline demo search in this process (EfficientNet-Lite models, bundled photos, MLflow on a temporary
SQLite store, real Ax) with timers wrapped around its parts, and prints, per part, the seconds of an average trial
after the first (the first pays the one-off work the later ones reuse) and the share of it. A part's time is
exclusive: a part called inside another (the backbone's forward inside ROAD) counts for itself only. Process
start-up (imports) is measured in a fresh interpreter; the search's opening (models, data, the validation split
classified once, reference maps) and its end (final head, test evaluation, registration) are reported per search.
With ``--out`` the table is also written as Markdown with the date, commit, machine and command.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import date
from functools import wraps
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from pipeline import config as configs  # noqa: E402
from pipeline.data.batches import DeviceBatches  # noqa: E402
from pipeline.evaluation import scoring  # noqa: E402
from pipeline.hpo.ax_study.space import load_search_space  # noqa: E402
from pipeline.hpo.ax_study.study import Study  # noqa: E402
from pipeline.hpo.driver import Search, SearchOptions  # noqa: E402
from pipeline.hpo.outputs import recorders  # noqa: E402
from pipeline.hpo.trials import trial_worker  # noqa: E402
from pipeline.metrics import road  # noqa: E402
from pipeline.models.auxiliary import FeatureExtractor  # noqa: E402
from pipeline.models.classifiers import Classifier  # noqa: E402
from pipeline.models.head import AttentionHead  # noqa: E402
from pipeline.resources import DEFAULT_SEARCH_SPACE  # noqa: E402
from pipeline.tracking.runs import RunLog  # noqa: E402
from pipeline.training import head_training, loop  # noqa: E402

# Groups: the phase of a trial a part belongs to (the innermost group on the stack decides).
TRAINING, CHECKPOINTS, VALIDATION, PLOTS, AX, MLFLOW = (
    "training",
    "checkpoint scoring",
    "ROAD validation",
    "plots",
    "Ax bookkeeping",
    "MLflow bookkeeping",
)
OTHER = "other"


class Profile:
    """Exclusive seconds per (trial, group, part), from timers pushed and popped on a stack."""

    def __init__(self) -> None:
        self.trial = -1  # -1: the search's opening; -2: its end
        self.stack: list[tuple[str, float, list[float]]] = []  # (label, start, [seconds of children])
        self.groups: list[str] = []
        self.seconds: dict[tuple[int, str, str], float] = defaultdict(float)
        self.trial_wall: dict[int, float] = defaultdict(float)

    def enter(self, label: str, group: bool) -> None:
        if group:
            self.groups.append(label)
        self.stack.append((label, time.perf_counter(), [0.0]))

    def leave(self, label: str, group: bool) -> None:
        name, start, children = self.stack.pop()
        elapsed = time.perf_counter() - start
        where = self.groups[-1] if self.groups else OTHER
        self.seconds[(self.trial, where, name if name != where else "(rest)")] += elapsed - children[0]
        if self.stack:
            self.stack[-1][2][0] += elapsed
        if group:
            self.groups.pop()

    def wrap(self, owner: Any, name: str, label: str | Callable[..., str], group: bool = False) -> None:
        """Time calls of ``owner.name`` as ``label`` (or ``label(*args)``); a generator's items as they come."""
        original = getattr(owner, name)

        @wraps(original)
        def timed(*args, **kwargs):
            text = label(*args, **kwargs) if callable(label) else label
            self.enter(text, group)
            try:
                result = original(*args, **kwargs)
            finally:
                self.leave(text, group)
            if isinstance(result, Iterator):
                return self._timed_items(result, text, group)
            if isinstance(result, (DataLoader, DeviceBatches)):  # a loader, iterated later
                return TimedLoader(result, lambda items: self._timed_items(iter(items), text, group))
            return result

        setattr(owner, name, timed)

    def _timed_items(self, items: Iterator, label: str, group: bool) -> Iterator:
        while True:
            self.enter(label, group)
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                self.leave(label, group)
            yield item


class TimedLoader:
    """A loader whose batches are timed as they come."""

    def __init__(self, loader: Any, timed: Callable[[Any], Iterator]) -> None:
        self.loader, self.timed = loader, timed

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        return self.timed(self.loader)


def classifier_label(network: Classifier, images: torch.Tensor) -> str:
    return "backbone forward (masked, with grad)" if torch.is_grad_enabled() else "backbone forward"


def instrument(profile: Profile) -> None:
    """Wrap the parts of a trial; the wrappers stay for the process's life."""
    wrap = profile.wrap
    wrap(head_training, "train", TRAINING, group=True)
    wrap(loop, "run_checkpoint", CHECKPOINTS, group=True)
    wrap(
        trial_worker,
        "evaluate_head",
        lambda *_, **__: CHECKPOINTS if CHECKPOINTS in profile.groups else VALIDATION,
        group=True,
    )
    wrap(trial_worker, "grid_and_curve", PLOTS, group=True)
    for method in ("next_trial", "complete", "stop_early", "fail"):
        wrap(Study, method, AX, group=True)
    for listener in (recorders.TrialRuns, recorders.SearchProgress, recorders.Console):
        for method in ("started", "placed", "result", "settled"):
            if method in vars(listener):
                wrap(listener, method, MLFLOW, group=True)
    wrap(RunLog, "log_step", MLFLOW, group=True)
    wrap(head_training, "build_explainer", "head construction")
    wrap(head_training, "training_batches", "data: training views")
    wrap(loop.FrozenOutputs, "outputs", "clean predictions and features (kept)")
    wrap(Classifier, "forward", classifier_label)
    wrap(FeatureExtractor, "forward", "auxiliary forward")
    wrap(AttentionHead, "forward", "head forward")
    wrap(loop, "mask_images", "masking")
    wrap(loop, "ptame_loss", "loss")
    wrap(torch.Tensor, "backward", "backward")
    wrap(torch.optim.AdamW, "step", "optimiser")
    wrap(scoring, "image_batches", "data: evaluation views")
    wrap(road, "road_masks", "ROAD masks")
    wrap(road, "noisy_linear_impute", "imputation")
    wrap(scoring, "adic_probabilities", "AD/IC")
    wrap(trial_worker.TrialWorker, "checkpoint_set", "checkpoint split (classified once)")

    next_trial = Study.next_trial

    def counting(self, *args, **kwargs):  # a trial starts when Ax is asked for its point
        profile.trial += 1
        return next_trial(self, *args, **kwargs)

    Study.next_trial = counting
    finish = Search.finish

    def ending(self, *args, **kwargs):
        profile.trial = -2
        return finish(self, *args, **kwargs)

    Search.finish = ending


def start_up_seconds() -> float:
    """Seconds a fresh interpreter takes to import the search command (torch, Ax, MLflow, ...)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import pipeline.search, pipeline.hpo.driver"], cwd=REPO, check=True)
    return time.perf_counter() - started


def table(profile: Profile, trials: int, start_up: float, wall: float) -> str:
    """Markdown: per (group, part), the mean seconds of trials 1.. and their share, then the one-off parts."""
    later = range(1, trials)
    per_part: dict[tuple[str, str], float] = defaultdict(float)
    for (trial, group, part), seconds in profile.seconds.items():
        if trial >= 1:
            per_part[(group, part)] += seconds / len(later)
    trial_total = sum(per_part.values())
    first = sum(s for (t, _, _), s in profile.seconds.items() if t == 0)
    lines = ["| phase | part | s per trial | share |", "|---|---|---:|---:|"]
    for (group, part), seconds in sorted(per_part.items(), key=lambda item: -item[1]):
        if seconds >= 0.05:
            lines.append(f"| {group} | {part} | {seconds:.2f} | {100 * seconds / trial_total:.1f} % |")
    small = sum(s for s in per_part.values() if s < 0.05)
    lines.append(f"| | parts under 0.05 s | {small:.2f} | {100 * small / trial_total:.1f} % |")
    lines.append(f"| **trial** (mean of trials 1–{trials - 1}) | | **{trial_total:.1f}** | 100 % |")
    groups: dict[str, float] = defaultdict(float)
    for (group, _), seconds in per_part.items():
        groups[group] += seconds
    lines.append("")
    lines.append("| phase | s per trial | share |")
    lines.append("|---|---:|---:|")
    for group, seconds in sorted(groups.items(), key=lambda item: -item[1]):
        lines.append(f"| {group} | {seconds:.2f} | {100 * seconds / trial_total:.1f} % |")
    opening = sum(s for (t, _, _), s in profile.seconds.items() if t == -1)
    ending = sum(s for (t, _, _), s in profile.seconds.items() if t == -2)
    lines.append("")
    lines.append("| once per search | s |")
    lines.append("|---|---:|")
    lines.append(f"| process start-up (imports, fresh interpreter) | {start_up:.1f} |")
    lines.append(f"| opening (models, data, validation split classified, reference maps, MLflow, Ax) | {opening:.1f} |")
    lines.append(f"| trial 0 (pays the one-off work later trials reuse) | {first:.1f} |")
    lines.append(f"| end (final head, test evaluation, export, registration) | {ending:.1f} |")
    lines.append(f"| whole search in this process ({trials} trials) | {wall:.1f} |")
    return "\n".join(lines)


def commit() -> str:
    described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
    return described.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3, help="trials to run (at least 2; default 3)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="demo config override")
    parser.add_argument("--out", type=Path, help="also write the table as Markdown here")
    args = parser.parse_args()
    if args.trials < 2:
        parser.error("--trials must be at least 2: the first trial pays one-off work")
    start_up = start_up_seconds()
    profile = Profile()
    instrument(profile)
    base = configs.apply_overrides(configs.read_yaml(REPO / "experiments" / "demo.yaml"), args.overrides)
    with tempfile.TemporaryDirectory() as folder:
        options = SearchOptions(
            name="profile",
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
        wall = time.perf_counter() - started
    text = table(profile, args.trials, start_up, wall)
    command = "python tests/benchmarks/trial_profile.py " + " ".join(sys.argv[1:])
    header = (
        f"Measured {date.today()} at commit {commit()} on {platform.node()} ({platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}), "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}: `{command.strip()}`"
    )
    print(f"\n{header}\n\n{text}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"{header}\n\n{text}\n")


if __name__ == "__main__":
    main()
