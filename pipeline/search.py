"""Search P-TAME's loss weights with Ax/BoTorch: ``python -m pipeline.search --backbone vgg16 --trials 20``.

Each trial trains a head for one epoch and is scored by ROAD MoRF (minimise) and LeRF (maximise) on the
validation split; everything is logged to MLflow. Then the chosen Pareto point trains the final head,
which is evaluated on the test split, registered and exported as ``best.yaml``. Rerunning the same
command (same ``--name``) resumes the search.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from pipeline import cli, config as configs
from pipeline.config import ExperimentConfig
from pipeline.errors import UserError
from pipeline.evaluate import EvalSet, Evaluation, evaluate_head, prepare_eval_set, summary_line
from pipeline.models.contributions import contribution_metrics, layer_contributions
from pipeline.plots import explanation_grid, road_curve
from pipeline.search_space import SearchSpace, load_search_space
from pipeline.study import Study, TrialRecord
from pipeline.tracking import RunLog, Tracker, registered_model_name
from pipeline.train import SUMMARY_FILE, TrainedHead, Workbench, save_head, train_head

DEFAULT_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "ptame.yaml"
BASE_CONFIG, SPACE, STATE = "base_config.yaml", "search_space.yaml", "state.json"
BEST, METRICS = "best.yaml", "metrics.json"
GRID_IMAGES = 8


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


def search_name(base: ExperimentConfig, space: SearchSpace) -> str:
    """A stable default name, so rerunning the same command resumes the same search."""
    raw = f"{base.name}-{base.model.backbone}-{base.model.auxiliary}-{space.name}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", raw)


def trial_config(base: dict[str, Any], space: SearchSpace, parameters: dict[str, Any]) -> ExperimentConfig:
    """The base experiment with the trial's parameters applied (validated like any config)."""
    return configs.from_dict(configs.apply_overrides(base, space.overrides(parameters)))


def _grid_and_curve(evalset: EvalSet, maps, evaluation: Evaluation, trained: TrainedHead, directory: Path,
                    title: str) -> list[Path]:
    """Explanation grid of the first validation images and the ROAD curve, as PNGs."""
    classifier = trained.explainer.classifier
    count = min(GRID_IMAGES, len(evalset))
    titles = [f"{classifier.category(int(t))} ({float(p):.2f})"
              for t, p in zip(evalset.targets[:count], evalset.probabilities[:count])]
    grid = explanation_grid(evalset.images[:count].cpu(), maps[:count].cpu(), titles, directory / "explanations.png")
    road = evaluation.road
    curve = road_curve(road.percentages, road.morf, road.lerf, road.morf_auc, road.lerf_auc,
                       directory / "road_curve.png", title=title)
    return [grid, curve]


@dataclass
class SearchState:
    """What the search keeps besides Ax's snapshot: the MLflow parent run and the final head's status."""

    path: Path
    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "SearchState":
        return cls(path, json.loads(path.read_text()) if path.is_file() else {})

    def set(self, **values: Any) -> None:
        self.values.update(values)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.values, indent=2))
        temporary.replace(self.path)


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

    def _open_state(self) -> None:
        """The search folder: the base config it was started with, our state and the Ax study."""
        directory = self.options.directory
        directory.mkdir(parents=True, exist_ok=True)
        base_path = directory / BASE_CONFIG
        if base_path.is_file() and configs.read_yaml(base_path) != self.options.base:
            raise UserError(f"search {self.options.name!r} was started with another experiment config "
                            f"({base_path}); rerun with the same options or choose a new --name")
        base_path.write_text(yaml.safe_dump(self.options.base, sort_keys=False))
        shutil.copyfile(self.options.space_path, directory / SPACE)
        self.state = SearchState.load(directory / STATE)
        cli.quiet_ax()
        self.study = Study.open(directory, self.options.space, self.options.seed)
        self.tracker = Tracker(self.options.tracking_uri)

    def _parent_params(self) -> dict[str, Any]:
        base = self.base_config
        return {"backbone": base.model.backbone, "auxiliary": base.model.auxiliary,
                "data": base.data.dataset if base.data.dataset == "demo" else base.data.root,
                "search_space": self.options.space.name, "seed": self.options.seed,
                "trials": self.options.trials, "epochs_per_trial": base.train.epochs,
                "batch_size": base.train.batch_size, "base": configs.to_dict(base)}

    def open(self) -> None:
        """Load models and data once (first, so bad input fails fast), then the study and MLflow runs."""
        self.bench = Workbench.load(self.base_config)
        self._open_state()
        evaluation = self.base_config.evaluation
        self.val_set = prepare_eval_set(self.bench.models.classifier, self.bench.splits.val, evaluation.batch_size)
        run_id = self.tracker.start_search(
            self.options.name, self._parent_params(),
            tags={"search": self.options.name, "backbone": self.base_config.model.backbone,
                  "auxiliary": self.base_config.model.auxiliary},
            run_id=self.state.values.get("parent_run_id"))
        self.state.set(parent_run_id=run_id)
        self.tracker.log_search_artifact(self.options.space_path, "search_space")

    def run_trial(self) -> TrialRecord:
        """Ask Ax for a point, train and evaluate it, tell Ax; failures are recorded, not raised."""
        index, parameters = self.study.next_trial()
        started = time.perf_counter()
        run: RunLog | None = None
        try:
            config = trial_config(self.options.base, self.options.space, parameters)
            run = self.tracker.start_trial(index, parameters | {"lambda3": config.loss.lambda3,
                                                                "config": configs.to_dict(config)})
            trained = self.trainer(config, self.bench, on_step=run.log_step, progress=self.options.progress)
            evaluation, maps = evaluate_head(trained.explainer, self.val_set, config.evaluation)
            metrics = evaluation.metrics() | {"train_seconds": trained.summary.seconds,
                                              "eval_seconds": evaluation.seconds}
            if not self.study.complete(index, metrics):
                raise FloatingPointError(f"non-finite objectives: MoRF {metrics['road_morf_auc']}, "
                                         f"LeRF {metrics['road_lerf_auc']}")
            run.log_metrics(metrics)
            folder = self.options.directory / "trials" / f"{index:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for path in _grid_and_curve(self.val_set, maps, evaluation, trained, folder, f"trial {index}"):
                run.log_artifact(path, "plots")
            run.finish()
        except Exception as error:  # a failing trial must not end the search
            reason = f"{type(error).__name__}: {error}".strip()
            if self.study.records()[index].status == "running":
                self.study.fail(index, reason)
            if run is not None:
                run.fail(reason)
        record = self.study.records()[index]
        self._report(record, time.perf_counter() - started)
        return record

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
        failures = 0
        while self.study.completed_count < self.options.trials:
            record = self.run_trial()
            failures = 0 if record.status == "completed" else failures + 1
            self._log_best()
            if failures >= self.options.max_failures_in_row:
                raise UserError(f"{failures} trials failed in a row (last: {record.reason}); fix the cause "
                                "and rerun the same command to resume")

    def finish(self) -> dict[str, Any]:
        """Report the trials, train the chosen configuration, evaluate it on the test split, export."""
        print(self.study.table())
        pareto = ", ".join(str(r.index) for r in self.study.pareto())
        print(f"Pareto set (trial indices): {pareto}")
        self.tracker.log_ax_analyses(self.study.client, self.options.directory / "ax", include_plotlyjs=True)
        self.tracker.log_search_artifact(self.study.path, "ax")
        chosen = self.study.select(self.options.select)
        config = trial_config(self.options.base, self.options.space, chosen.parameters)
        print(f"final head: trial {chosen.index} ({', '.join(f'{k}={v:.4g}' for k, v in chosen.parameters.items())})")
        final = self.options.directory / "final"
        run = self.tracker.start_final({"trial": chosen.index, "lambda3": config.loss.lambda3}
                                       | chosen.parameters | {"config": configs.to_dict(config)},
                                       system_metrics_interval_s=10.0 if self.options.system_metrics else 0)
        with run:
            trained = self.trainer(config, self.bench, on_step=run.log_step, progress=self.options.progress)
            save_head(trained, final)
            contributions = layer_contributions(trained.explainer, config.evaluation.min_class_count)
            run.log_metrics(contribution_metrics(contributions))
            run.log_artifact(final / SUMMARY_FILE, "head")
            test_set = prepare_eval_set(self.bench.models.classifier, self.bench.splits.test,
                                        config.evaluation.batch_size)
            evaluation, maps = evaluate_head(trained.explainer, test_set, config.evaluation)
            run.log_metrics(evaluation.metrics())
            for path in _grid_and_curve(test_set, maps, evaluation, trained, final, "final head, test split"):
                run.log_artifact(path, "plots")
            best = configs.dump(config, self.options.directory / BEST)
            report = {"trial": chosen.index, "parameters": chosen.parameters,
                      "validation": chosen.metrics, "test": evaluation.to_json()}
            (self.options.directory / METRICS).write_text(json.dumps(report, indent=2))
            version = run.log_head(trained.explainer.head, registered_model_name(
                config.model.backbone, config.model.auxiliary), final / "head.pt", best)
        self.tracker.log_search_artifact(best)
        self.tracker.log_search_artifact(self.options.directory / METRICS)
        self.state.set(final_trial=chosen.index, model_version=version)
        print(f"test split: {summary_line(evaluation)}")
        print(f"exported {best} (reproduce: python -m pipeline.train --config {best}), "
              f"head {final / 'head.pt'}, registered model version {version}")
        return report

    def run(self) -> dict[str, Any]:
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


def base_experiment(args: argparse.Namespace) -> dict[str, Any]:
    """The experiment dict shared by every trial: --experiment, then --backbone/--aux/--data, then --set."""
    values = configs.read_yaml(args.experiment) if args.experiment else {}
    shortcuts = []
    if args.backbone:
        shortcuts.append(f"model.backbone={args.backbone}")
    if args.aux:
        shortcuts.append(f"model.auxiliary={args.aux}")
    if args.data and args.data != "demo":
        root = Path(args.data).expanduser()
        kind = "imagenet" if (root / "val").is_dir() and len(list((root / "val").iterdir())) == 1000 else "folder"
        shortcuts += [f"data.dataset={kind}", f"data.root={root}"]
    elif args.data == "demo":
        shortcuts.append("data.dataset=demo")
    merged = configs.apply_overrides(values, shortcuts + list(args.overrides))
    if "name" not in merged:
        merged["name"] = "search"
    configs.from_dict(merged)  # fail fast on a bad config
    return merged


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.search", description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", help="classifier to explain (vgg16, resnet50, vit_b_16, timm:<name>, ...)")
    parser.add_argument("--aux", help="auxiliary feature network (default resnet18; 'backbone' for T-TAME mode)")
    parser.add_argument("--data", help="'demo' or a folder (ImageNet layout or an ImageFolder)")
    parser.add_argument("--trials", type=int, default=20, help="completed trials to reach (default 20)")
    cli.add_config_arguments(parser)
    parser.add_argument("--space", type=Path, default=DEFAULT_SPACE, help="search space YAML")
    parser.add_argument("--name", help="search name (default: derived from the setup; same name = resume)")
    parser.add_argument("--seed", type=int, help="search seed (default: the space's seed)")
    parser.add_argument("--out", type=Path, default=Path("runs/search"), help="folder for all searches")
    parser.add_argument("--select", type=int, metavar="TRIAL", help="train the final head with this trial")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    base = base_experiment(args)
    space = load_search_space(args.space)
    name = args.name or search_name(configs.from_dict(base), space)
    options = SearchOptions(name=name, trials=args.trials, base=base, space=space, space_path=args.space,
                            seed=space.seed if args.seed is None else args.seed,
                            directory=args.out / name, tracking_uri=args.tracking_uri,
                            select=args.select, progress=not args.no_progress)
    print(f"search {name!r}: {args.trials} trials, state in {options.directory}")
    Search(options).run()
    return 0


if __name__ == "__main__":
    cli.run(main)
