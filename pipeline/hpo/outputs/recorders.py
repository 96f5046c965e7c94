"""The search's trial listeners: each trial's MLflow run and plots, the search run's progress, the console."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.config import ExperimentConfig
from pipeline.hpo.ax_study.records import TrialRecord
from pipeline.hpo.ax_study.study import INTERRUPTED, Study
from pipeline.hpo.ax_study.trial_state import TrialState
from pipeline.hpo.outputs.folder import SearchFolder
from pipeline.hpo.trials.loop import TrialListener
from pipeline.hpo.trials.pools import StepLog
from pipeline.hpo.trials.trial_worker import TrialResult
from pipeline.tracking.runs import RunLog, Tracker

CHECKPOINT_PREFIX = "checkpoint_"  # the checkpoint curves: checkpoint_road_morf_auc at step = % of training
FINAL_PERCENT = 100


class TrialRuns(TrialListener):
    """A child MLflow run per trial (params, steps, metrics, checkpoint curves, plots, where it ran, outcome); its
    plots also go to the trial's folder. A trial stopped early ends KILLED with the reason in a tag."""

    def __init__(
        self, tracker: Tracker, folder: SearchFolder, run_params: Callable[[ExperimentConfig], dict[str, Any]]
    ) -> None:
        self.tracker = tracker
        self.folder = folder
        self.run_params = run_params
        self.runs: dict[int, RunLog] = {}

    def started(self, index: int, parameters: dict[str, Any], config: ExperimentConfig) -> StepLog:
        self.runs[index] = self.tracker.start_trial(index, parameters | self.run_params(config))
        return self.runs[index]

    def placed(self, index: int, where: dict[str, str]) -> None:
        self.runs[index].set_tags({f"worker.{key}": value for key, value in where.items()})

    def result(self, index: int, result: TrialResult) -> None:
        """Log what the trial produced; its run ends only once the study has recorded it (`settled`), so a kill in
        between leaves both running and a resume marks both interrupted."""
        run = self.runs[index]
        for step in result.steps:
            run.log_step(step.step, step.metrics, step.timestamp_ms)
        run.log_metrics(result.metrics)
        curves = dict(result.checkpoints)
        if result.stopped is None:
            curves[FINAL_PERCENT] = result.metrics
        for percentage, scores in sorted(curves.items()):
            run.log_metrics(
                {
                    CHECKPOINT_PREFIX + name: value
                    for name, value in scores.items()
                    if name in ("road_morf_auc", "road_lerf_auc")
                },
                step=percentage,
            )
        folder = self.folder.trial(index)
        for name, png in result.plots.items():
            (folder / name).write_bytes(png)
            run.log_artifact(folder / name, "plots")

    def settled(self, record: TrialRecord, seconds: float) -> None:
        run = self.runs.pop(record.index, None)
        if run is not None and record.status is TrialState.COMPLETED:
            run.finish()
        elif run is not None and record.status is TrialState.EARLY_STOPPED:
            run.stop(record.reason or record.status)
        elif run is not None:
            run.fail(record.reason or record.status)

    def interrupted(self, index: int) -> None:
        self.runs.pop(index).fail(INTERRUPTED)


class SearchProgress(TrialListener):
    """After every trial: the best scores so far on the search run (step = completed trials) and its description."""

    def __init__(self, tracker: Tracker, study: Study, describe: Callable[[], None]) -> None:
        self.tracker = tracker
        self.study = study
        self.describe = describe

    def settled(self, record: TrialRecord, seconds: float) -> None:
        done = [r for r in self.study.records() if r.status is TrialState.COMPLETED]
        if done:
            morf = [r.metrics["road_morf_auc"] for r in done]
            lerf = [r.metrics["road_lerf_auc"] for r in done]
            self.tracker.log_search_metrics(
                {
                    "best_morf_auc": min(morf),
                    "best_lerf_auc": max(lerf),
                    "best_lerf_minus_morf": max(b - a for a, b in zip(morf, lerf)),
                },
                step=len(done),
            )
        self.describe()


class Console(TrialListener):
    """One line per settled trial, with its checkpoint scores; with Ray workers also where each trial started."""

    def __init__(self, announce_placement: bool) -> None:
        self.announce_placement = announce_placement

    def placed(self, index: int, where: dict[str, str]) -> None:
        if self.announce_placement:
            print(f"trial {index:3d} started on {worker_description(where)}", flush=True)

    def settled(self, record: TrialRecord, seconds: float) -> None:
        params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.parameters.items())
        if record.status is TrialState.COMPLETED:
            outcome = _scores(record.metrics)
        else:
            outcome = f"{record.status.upper()}: {record.reason}"
        during = "; ".join(
            f"{percentage} %: {_scores(scores)}" for percentage, scores in sorted(record.checkpoints.items())
        )
        during = f" [{during}]" if during else ""
        print(
            f"trial {record.index:3d} [{record.generator}] {params} -> {outcome}{during} ({seconds:.0f} s)", flush=True
        )


def _scores(metrics: dict[str, float]) -> str:
    return f"MoRF {metrics['road_morf_auc']:.4f} LeRF {metrics['road_lerf_auc']:.4f}"


def worker_description(where: dict[str, str]) -> str:
    """``worker 1 (gpu-node-3, pid 4242, GPU 1)`` for the console."""
    gpus = where.get("cuda_visible_devices")
    device = f"GPU {gpus}" if gpus else where["device"]
    return f"worker {where['slot']} ({where['host']}, pid {where['pid']}, {device})"
