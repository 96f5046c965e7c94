"""One search: the Ax study, the loaded models and data, the MLflow runs, the trial loop and the final head."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from pipeline import config as configs
from pipeline.errors import UserError
from pipeline.evaluation.scoring import (
    EvalSet,
    evaluate_head,
    evaluate_maps,
    prepare_eval_set,
    reference_maps,
    summary_line,
)
from pipeline.hpo import ax_seam
from pipeline.hpo.analyses import log_ax_analyses
from pipeline.hpo.descriptions import FinalHead, search_description, version_description, version_tags
from pipeline.hpo.folder import BASE_CONFIG, BEST, METRICS, REFERENCES, SPACE, STATE, SearchState
from pipeline.hpo.pools import Finished, InProcessPool, TrialPool
from pipeline.hpo.space import SearchSpace
from pipeline.hpo.study import INTERRUPTED, AwaitingData, Study, TrialRecord, objective_thresholds
from pipeline.hpo.trial_configs import run_params, trial_config
from pipeline.hpo.trial_table import study_table
from pipeline.hpo.trial_worker import TrialResult, TrialWorker, failure_reason
from pipeline.locking import search_lock
from pipeline.metrics.road import road_protocol_of
from pipeline.models.contributions import contribution_metrics, layer_contributions
from pipeline.reports.figures import grid_and_curve
from pipeline.tracking.links import review_link
from pipeline.tracking.registry import registered_model_name, start_final
from pipeline.tracking.runs import RunLog, Tracker
from pipeline.tracking.stores import is_tracking_server
from pipeline.training.head_training import TrainedHead, Workbench, train_head
from pipeline.training.saved_head import save_head

REFERENCE_MAPS = {"random": "random maps", "center": "centred blob"}  # reference_maps() kind -> table label


@dataclass
class SearchOptions:
    name: str
    trials: int
    base: dict[str, Any]
    space: SearchSpace
    space_path: Path
    seed: int
    directory: Path
    tracking_uri: str | None = None
    select: int | None = None
    max_failures_in_row: int = 3
    progress: bool = True
    system_metrics: bool = True
    parallel: int = 1
    ray_address: str | None = None
    gpus_per_trial: float | None = None

    @property
    def uses_ray(self) -> bool:
        """Trials run on Ray workers: more than one at once, or on a named cluster."""
        return self.parallel > 1 or self.ray_address is not None


class Search:
    """One search: the Ax study, the loaded models and data, the MLflow runs, the trial loop."""

    def __init__(self, options: SearchOptions,
                 trainer: Callable[..., TrainedHead] = train_head):
        self.options = options
        self.trainer = trainer
        self.base_config = configs.from_dict(options.base)
        self.study: Study | None = None
        self.tracker: Tracker | None = None
        self.bench: Workbench | None = None
        self.val_set: EvalSet | None = None
        self.references: dict[str, dict[str, float]] = {}
        self._failures_in_row = 0

    def _open_folder(self) -> None:
        """The search folder: the base config it was started with, the search space, and our state."""
        directory = self.options.directory
        directory.mkdir(parents=True, exist_ok=True)
        base_path = directory / BASE_CONFIG
        if base_path.is_file() and configs.read_yaml(base_path) != self.options.base:
            raise UserError(f"search {self.options.name!r} was started with another experiment config "
                            f"({base_path}); rerun with the same options or choose a new --name")
        base_path.write_text(yaml.safe_dump(self.options.base, sort_keys=False))
        shutil.copyfile(self.options.space_path, directory / SPACE)
        self.state = SearchState.load(directory / STATE)

    def _reference_scores(self) -> dict[str, dict[str, float]]:
        """ROAD of trivial maps (random, a centred blob) on the validation split, scored once per search
        and kept in the state; logged on the parent run with the objective thresholds they set."""
        cached = self.state.values.get(REFERENCES)
        if cached is not None:
            return cached
        evaluation, classifier = self.base_config.evaluation, self.bench.models.classifier
        size = tuple(self.val_set.images.shape[-2:])
        scores = {}
        for kind, label in REFERENCE_MAPS.items():
            maps = reference_maps(kind, len(self.val_set), size, evaluation.seed)
            scores[label] = evaluate_maps(classifier, self.val_set, maps, evaluation).road.metrics()
        self.state.set(**{REFERENCES: scores})
        self.tracker.log_search_metrics({f"{kind}_maps_{name}": value for kind, label in REFERENCE_MAPS.items()
                                         for name, value in scores[label].items()}
                                        | {f"threshold_{name}": value
                                           for name, value in self._thresholds(scores).items()}, step=0)
        return scores

    def _thresholds(self, references: dict[str, dict[str, float]]) -> dict[str, float]:
        """The search space's fixed objective thresholds, else the worst trivial map's score per objective."""
        return self.options.space.thresholds or objective_thresholds(references, self.options.space.objective_signs)

    def _parent_params(self) -> dict[str, Any]:
        base = self.base_config
        return {"backbone": base.model.backbone, "auxiliary": base.model.auxiliary,
                "data": base.data.dataset if base.data.dataset == "demo" else base.data.root,
                "search_space": self.options.space.name, "seed": self.options.seed,
                "trials": self.options.trials, "epochs_per_trial": base.train.epochs,
                "batch_size": base.train.batch_size, "base": configs.to_dict(base)}

    def open(self) -> None:
        """Load models and data once (first, so bad input fails fast), then the MLflow runs, the reference
        maps' scores (the objective thresholds) and the study."""
        self.bench = Workbench.load(self.base_config)
        self._open_folder()
        evaluation = self.base_config.evaluation
        self.val_set = prepare_eval_set(self.bench.models.classifier, self.bench.splits.val, evaluation.batch_size)
        self.tracker = Tracker(self.options.tracking_uri)
        run_id = self.tracker.start_search(
            self.options.name, self._parent_params(),
            tags={"search": self.options.name, "backbone": self.base_config.model.backbone,
                  "auxiliary": self.base_config.model.auxiliary, "road_protocol": road_protocol_of(evaluation)},
            run_id=self.state.values.get("parent_run_id"))
        self.state.set(parent_run_id=run_id)
        print(review_link(self.tracker.tracking_uri, self.tracker.experiment_id), flush=True)
        self.tracker.log_search_artifact(self.options.space_path, "search_space")
        self.references = self._reference_scores()
        thresholds = self._thresholds(self.references)
        source = "the search space" if self.options.space.thresholds else "trivial maps on the validation split"
        print(f"ROAD protocol of every trial: {road_protocol_of(evaluation)}")
        print(f"objective thresholds from {source}: "
              + ", ".join(f"{name} {'>=' if sign > 0 else '<='} {thresholds[name]:.4f}"
                          for name, sign in self.options.space.objective_signs.items() if name in thresholds))
        ax_seam.quiet_ax()
        self.study = Study.open(self.options.directory, self.options.space, self.options.seed, thresholds)
        self._describe()

    def _describe(self, final: FinalHead | None = None) -> None:
        """Refresh the search run's description: setup, trials so far, Pareto set, and the final head if any."""
        self.tracker.describe_search(search_description(
            self.options.name, self.base_config, self.options.space, self.options.trials, self.study.records(),
            self.study.pareto(), final))

    def _trial_pool(self) -> TrialPool:
        """This process for one trial at a time, else Ray workers (Ray is imported only then)."""
        if not self.options.uses_ray:
            return InProcessPool(TrialWorker(self.bench, self.val_set, self.trainer, self.options.progress))
        from pipeline.hpo.ray_pool import RayPool

        if torch.cuda.is_available():  # hand the GPU memory cached by the reference maps' ROAD to the workers
            torch.cuda.empty_cache()
        uri = self.tracker.tracking_uri
        return RayPool(self.options.base, self.trainer, self.options.parallel, self.options.gpus_per_trial,
                       self.options.ray_address, tracking_uri=uri if is_tracking_server(uri) else None)

    def _start_trials(self, pool: TrialPool, running: dict[int, tuple[RunLog, float]]) -> None:
        """Ask Ax for a point per free slot (the running trials are its pending points) and start them,
        never more than the completed trials still missing."""
        while pool.free_slots() and self.study.completed_count + len(running) < self.options.trials:
            try:
                index, parameters = self.study.next_trial()
            except AwaitingData:  # Sobol budget spent, too few completed: wait for a running trial
                return
            started = time.perf_counter()
            try:
                config = trial_config(self.options.base, self.options.space, parameters)
                run = self.tracker.start_trial(index, parameters | run_params(config))
            except Exception as error:  # a failing trial must not end the search
                self._settle(Finished(index, failure=failure_reason(error)), None, started)
                continue
            where = pool.submit(index, config, run)
            running[index] = (run, started)
            run.set_tags({f"worker.{key}": value for key, value in where.items()})
            if self.options.uses_ray:
                print(f"trial {index:3d} started on {_describe(where)}", flush=True)

    def _settle(self, done: Finished, run: RunLog | None, started: float) -> None:
        """Record a trial that came back in Ax, MLflow and its folder; stop after too many failures in a row."""
        failure = done.failure
        if done.result is not None:
            try:
                self._complete(done.index, run, done.result)
            except Exception as error:
                failure = failure_reason(error)
        if failure is not None:
            if self.study.records()[done.index].status == "running":
                self.study.fail(done.index, failure)
            if run is not None:
                run.fail(failure)
        record = self.study.records()[done.index]
        self._report(record, time.perf_counter() - started)
        self._log_best()
        self._describe()
        self._failures_in_row = 0 if record.status == "completed" else self._failures_in_row + 1
        if self._failures_in_row >= self.options.max_failures_in_row:
            raise UserError(f"{self._failures_in_row} trials failed in a row (last: {record.reason}); fix the "
                            "cause and rerun the same command to resume")

    def _complete(self, index: int, run: RunLog, result: TrialResult) -> None:
        """Log the result to the trial's run and folder, tell Ax, then end the run: a kill in between
        leaves the trial running in Ax, so a resume marks both interrupted."""
        for step in result.steps:
            run.log_step(step.step, step.metrics, step.timestamp_ms)
        run.log_metrics(result.metrics)
        folder = self.options.directory / "trials" / f"{index:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, png in result.plots.items():
            (folder / name).write_bytes(png)
            run.log_artifact(folder / name, "plots")
        if not self.study.complete(index, result.metrics):
            raise FloatingPointError(f"non-finite objectives: MoRF {result.metrics['road_morf_auc']}, "
                                     f"LeRF {result.metrics['road_lerf_auc']}")
        run.finish()

    def _abandon(self, running: dict[int, tuple[RunLog, float]]) -> None:
        """The search stops with trials in flight: record them as interrupted now, as a resume would.
        Best effort, so that the error that stopped the search is the one reported."""
        for index, (run, _) in running.items():
            with contextlib.suppress(Exception):
                self.study.fail(index, INTERRUPTED)
                run.fail(INTERRUPTED)

    def _report(self, record: TrialRecord, seconds: float) -> None:
        params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in record.parameters.items())
        if record.status == "completed":
            outcome = f"MoRF {record.metrics['road_morf_auc']:.4f} LeRF {record.metrics['road_lerf_auc']:.4f}"
        else:
            outcome = f"{record.status.upper()}: {record.reason}"
        print(f"trial {record.index:3d} [{record.generator}] {params} -> {outcome} ({seconds:.0f} s)", flush=True)

    def _log_best(self) -> None:
        done = [r for r in self.study.records() if r.status == "completed"]
        if done:
            morf = [r.metrics["road_morf_auc"] for r in done]
            lerf = [r.metrics["road_lerf_auc"] for r in done]
            gap = [b - a for a, b in zip(morf, lerf)]
            self.tracker.log_search_metrics({"best_morf_auc": min(morf), "best_lerf_auc": max(lerf),
                                             "best_lerf_minus_morf": max(gap)}, step=len(done))

    def run_trials(self) -> None:
        """Run trials until ``trials`` have completed, up to ``parallel`` at once, each started as soon
        as a slot frees up. Failed trials are recorded and replaced."""
        pool = self._trial_pool()
        running: dict[int, tuple[RunLog, float]] = {}
        try:
            while self.study.completed_count < self.options.trials:
                self._start_trials(pool, running)
                for done in pool.wait():
                    self._settle(done, *running.pop(done.index))
        except BaseException:
            self._abandon(running)
            raise
        finally:
            pool.close()

    def finish(self) -> dict[str, Any]:
        """Report the trials, train the chosen configuration, evaluate it on the test split, export."""
        print(study_table(self.study, self.references))
        pareto = ", ".join(str(r.index) for r in self.study.pareto())
        print(f"Pareto set (trial indices): {pareto}")
        log_ax_analyses(self.tracker, self.study.client, self.options.directory / "ax", include_plotlyjs=True)
        self.tracker.log_search_artifact(self.study.path, "ax")
        chosen = self.study.select(self.options.select)
        config = trial_config(self.options.base, self.options.space, chosen.parameters)
        print(f"final head: trial {chosen.index} ({', '.join(f'{k}={v:.4g}' for k, v in chosen.parameters.items())})")
        final = self.options.directory / "final"
        run = start_final(self.tracker, {"trial": chosen.index} | chosen.parameters | run_params(config),
                                       system_metrics_interval_s=10.0 if self.options.system_metrics else 0)
        with run:
            trained = self.trainer(config, self.bench, on_step=run.log_step, progress=self.options.progress)
            save_head(trained, final)
            contributions = layer_contributions(trained.explainer, config.evaluation.min_class_count)
            run.log_metrics(contribution_metrics(contributions))
            test_set = prepare_eval_set(self.bench.models.classifier, self.bench.splits.test,
                                        config.evaluation.batch_size)
            evaluation, maps = evaluate_head(trained.explainer, test_set, config.evaluation)
            run.log_metrics(evaluation.metrics())
            for path in grid_and_curve(test_set, maps, evaluation, trained, final, "final head, test split"):
                run.log_artifact(path, "plots")
            best = configs.dump(config, self.options.directory / BEST)
            report = {"trial": chosen.index, "parameters": chosen.parameters,
                      "validation": chosen.metrics, "test": evaluation.to_json()}
            (self.options.directory / METRICS).write_text(json.dumps(report, indent=2))
            name = registered_model_name(config.model.backbone, config.model.auxiliary)
            version = run.log_explainer(final, config, trained.explainer.classifier.preprocessing.input_size, name)
            head = FinalHead(self.options.name, chosen, config, evaluation.metrics(), evaluation.images,
                             trained.coverage.summary(), name, version)
            run.describe_version(name, version, version_description(head), version_tags(head), head.alias)
        self.tracker.log_search_artifact(best)
        self.tracker.log_search_artifact(self.options.directory / METRICS)
        self.state.set(final_trial=chosen.index, model_version=version)
        self._describe(head)
        print(f"test split: {summary_line(evaluation)}")
        print(f"exported {best} (reproduce: python -m pipeline.train --config {best}), "
              f"head {final / 'head.pt'}, registered as models:/{name}/{version} and {head.uri}")
        print(review_link(self.tracker.tracking_uri, self.tracker.experiment_id))
        return report

    def run(self) -> dict[str, Any]:
        with search_lock(self.options.directory, self.options.name):
            try:
                self.open()
                self.run_trials()
                report = self.finish()
            except BaseException:
                if self.tracker is not None and self.tracker.search_run_id is not None:
                    self.tracker.end_search("FAILED")
                raise
            self.tracker.end_search("FINISHED")
        return report


def _describe(where: dict[str, str]) -> str:
    """``worker 1 (gpu-node-3, pid 4242, GPU 1)`` for the console."""
    gpus = where.get("cuda_visible_devices")
    device = f"GPU {gpus}" if gpus else where["device"]
    return f"worker {where['slot']} ({where['host']}, pid {where['pid']}, {device})"
