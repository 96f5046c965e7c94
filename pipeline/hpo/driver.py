"""One search, the façade over the parts: the search folder, the models and data loaded once, the MLflow search
run, the reference maps' scores (the objective thresholds), the Ax study, the trial loop and the final head."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline import config as configs
from pipeline.data.manifest import SPLIT_NAMES, SplitRecord, changes
from pipeline.errors import UserError
from pipeline.evaluation.scoring import EvalSet, MapKind, evaluate_maps, prepare_eval_set, reference_maker, summary_line
from pipeline.hpo.ax_study import ax_seam
from pipeline.hpo.ax_study.analyses import log_ax_analyses
from pipeline.hpo.ax_study.space import SearchSpace
from pipeline.hpo.ax_study.study import Study, objective_thresholds
from pipeline.hpo.outputs.descriptions import FinalHead, search_description
from pipeline.hpo.outputs.final_head import train_final_head
from pipeline.hpo.outputs.folder import FINAL_TRIAL, MODEL_VERSION, PARENT_RUN, REFERENCES, SearchFolder
from pipeline.hpo.outputs.recorders import Console, SearchProgress, TrialRuns
from pipeline.hpo.outputs.trial_table import study_table
from pipeline.hpo.trials.loop import TrialLoop
from pipeline.hpo.trials.pools import InProcessPool, TrialPool
from pipeline.hpo.trials.trial_configs import run_params, trial_config
from pipeline.hpo.trials.trial_worker import Trainer, TrialWorker
from pipeline.locking import search_lock
from pipeline.metrics.road import road_protocol_of
from pipeline.tracking.links import review_link
from pipeline.tracking.runs import Tracker
from pipeline.tracking.stores import is_tracking_server
from pipeline.training.head_training import Workbench, train_head

REFERENCE_MAPS: dict[MapKind, str] = {"random": "random maps", "center": "centred blob"}  # kind -> table label


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
    """``Search(options).run()``: open (or resume) the search, run its trials, train and register the final head."""

    def __init__(self, options: SearchOptions, trainer: Trainer = train_head):
        self.options = options
        self.trainer = trainer
        self.base_config = configs.from_dict(options.base)
        self.folder = SearchFolder(options.directory)
        self.study: Study | None = None
        self.tracker: Tracker | None = None
        self.bench: Workbench | None = None
        self.val_set: EvalSet | None = None
        self.references: dict[str, dict[str, float]] = {}

    def open(self) -> None:
        """Load models and data once (first, so bad input fails fast), then the MLflow runs, the reference maps'
        scores (the objective thresholds) and the study."""
        options, base = self.options, self.base_config
        self.bench = Workbench.load(base)
        self.folder.start(options.name, options.base, options.space_path)
        self._record_splits()
        self.val_set = prepare_eval_set(
            self.bench.models.classifier,
            self.bench.splits.val,
            base.evaluation.batch_size,
            num_workers=base.data.num_workers,
        )
        self.tracker = Tracker(options.tracking_uri)
        protocol = road_protocol_of(base.evaluation)
        run_id = self.tracker.start_search(
            options.name,
            self._parent_params(),
            tags={
                "search": options.name,
                "backbone": base.model.backbone,
                "auxiliary": base.model.auxiliary,
                "road_protocol": protocol,
            },
            run_id=self.folder.state.get(PARENT_RUN),
        )
        self.folder.update_state(**{PARENT_RUN: run_id})
        print(review_link(self.tracker.tracking_uri, self.tracker.experiment_id), flush=True)
        self.tracker.log_search_artifact(options.space_path, "search_space")
        self.references = self._reference_scores()
        thresholds = self._thresholds(self.references)
        source = "the search space" if options.space.thresholds else "trivial maps on the validation split"
        print(f"ROAD protocol of every trial: {protocol}")
        print(
            f"objective thresholds from {source}: "
            + ", ".join(
                f"{name} {'>=' if sign > 0 else '<='} {thresholds[name]:.4f}"
                for name, sign in options.space.objective_signs.items()
                if name in thresholds
            )
        )
        ax_seam.quiet_ax()
        self.study = Study.open(options.directory, options.space, options.seed, thresholds)
        self._describe()

    def _record_splits(self) -> None:
        """Write what each split holds (``splits.json``); a resumed search whose data changed since it started is
        refused, since its trials would be scored on other images."""
        assert self.bench is not None, "open() loads the bench first"
        record, recorded = self.bench.split_record, SplitRecord.read(self.folder.directory)
        if recorded is not None:
            changed = {
                name: change
                for name in SPLIT_NAMES
                if (change := changes(recorded.splits[name], record.splits[name])) is not None
            }
            if changed:
                raise UserError(
                    f"the data of search {self.options.name!r} changed since it started ("
                    + "; ".join(f"{name}: {change}" for name, change in changed.items())
                    + "); restore it, or start a new search with another --name"
                )
        record.write(self.folder.directory)

    def _reference_scores(self) -> dict[str, dict[str, float]]:
        """ROAD of trivial maps (random, a centred blob) on the validation split, scored once per search and kept
        in the state; logged on the search run with the objective thresholds they set."""
        cached = self.folder.state.get(REFERENCES)
        if cached is not None:
            return cached
        assert self.bench is not None and self.val_set is not None and self.tracker is not None, "set by open()"
        evaluation, classifier = self.base_config.evaluation, self.bench.models.classifier
        scores = {
            label: evaluate_maps(classifier, self.val_set, reference_maker(kind, evaluation.seed), evaluation)[
                0
            ].road.metrics()
            for kind, label in REFERENCE_MAPS.items()
        }
        self.folder.update_state(**{REFERENCES: scores})
        self.tracker.log_search_metrics(
            {
                f"{kind}_maps_{name}": value
                for kind, label in REFERENCE_MAPS.items()
                for name, value in scores[label].items()
            }
            | {f"threshold_{name}": value for name, value in self._thresholds(scores).items()},
            step=0,
        )
        return scores

    def _thresholds(self, references: dict[str, dict[str, float]]) -> dict[str, float]:
        """The search space's fixed objective thresholds, else the worst trivial map's score per objective."""
        return self.options.space.thresholds or objective_thresholds(references, self.options.space.objective_signs)

    def _parent_params(self) -> dict[str, Any]:
        base = self.base_config
        return {
            "backbone": base.model.backbone,
            "auxiliary": base.model.auxiliary,
            "data": base.data.dataset if base.data.dataset == "demo" else base.data.root,
            "search_space": self.options.space.name,
            "seed": self.options.seed,
            "trials": self.options.trials,
            "epochs_per_trial": base.train.epochs,
            "batch_size": base.train.batch_size,
            "base": configs.to_dict(base),
        }

    def _describe(self, final: FinalHead | None = None) -> None:
        """Refresh the search run's description: setup, trials so far, Pareto set, and the final head if any."""
        assert self.tracker is not None and self.study is not None, "set by open()"
        self.tracker.describe_search(
            search_description(
                self.options.name,
                self.base_config,
                self.options.space,
                self.options.trials,
                self.study.records(),
                self.study.pareto(),
                final,
            )
        )

    def _trial_pool(self) -> TrialPool:
        """This process for one trial at a time, else Ray workers (Ray is imported only then)."""
        options = self.options
        assert self.bench is not None and self.val_set is not None and self.tracker is not None, "set by open()"
        if not options.uses_ray:
            return InProcessPool(TrialWorker(self.bench, self.val_set, self.trainer, options.progress))
        from pipeline.hpo.trials.ray_pool import RayPool

        if torch.cuda.is_available():  # hand the GPU memory cached by the reference maps' ROAD to the workers
            torch.cuda.empty_cache()
        uri = self.tracker.tracking_uri
        return RayPool(
            options.base,
            self.trainer,
            options.parallel,
            options.gpus_per_trial,
            options.ray_address,
            tracking_uri=uri if is_tracking_server(uri) else None,
        )

    def run_trials(self) -> None:
        """Run trials until ``trials`` have completed (`TrialLoop`), recorded in MLflow, the folder and the console."""
        options = self.options
        assert self.tracker is not None and self.study is not None, "set by open()"
        listeners = [
            TrialRuns(self.tracker, self.folder, run_params),
            SearchProgress(self.tracker, self.study, self._describe),
            Console(options.uses_ray),
        ]
        TrialLoop(
            self.study,
            self._trial_pool(),
            lambda parameters: trial_config(options.base, options.space, parameters),
            listeners,
            options.trials,
            options.max_failures_in_row,
        ).run()

    def finish(self) -> dict[str, Any]:
        """Report the trials, train the chosen configuration, evaluate it on the test split, export, register."""
        assert self.bench is not None and self.tracker is not None and self.study is not None, "set by open()"
        print(study_table(self.study, self.references))
        print(f"Pareto set (trial indices): {', '.join(str(r.index) for r in self.study.pareto())}")
        log_ax_analyses(self.tracker, self.study.client, self.folder.analyses, include_plotlyjs=True)
        self.tracker.log_search_artifact(self.study.path, "ax")
        choice = self.study.select(self.options.select)
        chosen = choice.record
        config = trial_config(self.options.base, self.options.space, chosen.parameters)
        print(
            f"final head: trial {chosen.index} ({', '.join(f'{k}={v:.4g}' for k, v in chosen.parameters.items())}),"
            f" {choice.describe()}"
        )
        report, evaluation, head = train_final_head(
            self.options.name,
            choice,
            config,
            self.bench,
            self.trainer,
            self.tracker,
            self.folder,
            self.options.progress,
            self.options.system_metrics,
        )
        self.tracker.log_search_artifact(self.folder.best)
        self.tracker.log_search_artifact(self.folder.metrics)
        self.folder.update_state(**{FINAL_TRIAL: chosen.index, MODEL_VERSION: head.version})
        self._describe(head)
        print(f"test split: {summary_line(evaluation)}")
        print(
            f"exported {self.folder.best} (reproduce: python -m pipeline.train --config {self.folder.best}), "
            f"head {self.folder.final / 'head.pt'}, registered as models:/{head.model}/{head.version} and {head.uri}"
        )
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
            assert self.tracker is not None  # (open() set it)
            self.tracker.end_search("FINISHED")
        return report
