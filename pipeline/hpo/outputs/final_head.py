"""A search's final head: the chosen trial's config trained again on the search's models and data, evaluated on the
test split, registered in MLflow (description, tags, an alias per search) and exported (best.yaml, metrics.json,
final/)."""

from __future__ import annotations

import json
from typing import Any

from pipeline import config as configs
from pipeline.config import ExperimentConfig
from pipeline.evaluation.scoring import Evaluation, evaluate_head, prepare_eval_set
from pipeline.hpo.ax_study.choice import Choice
from pipeline.hpo.outputs.descriptions import FinalHead, version_description, version_tags
from pipeline.hpo.outputs.folder import SearchFolder
from pipeline.hpo.trials.trial_configs import run_params
from pipeline.hpo.trials.trial_worker import Trainer
from pipeline.models.contributions import contribution_metrics, layer_contributions
from pipeline.reports.figures import grid_and_curve
from pipeline.tracking.registry import registered_model_name, start_final
from pipeline.tracking.runs import Tracker
from pipeline.training.head_training import Workbench
from pipeline.training.saved_head import save_head


def train_final_head(
    search: str,
    choice: Choice,
    config: ExperimentConfig,
    bench: Workbench,
    trainer: Trainer,
    tracker: Tracker,
    folder: SearchFolder,
    progress: bool = True,
    system_metrics: bool = True,
) -> tuple[dict[str, Any], Evaluation, FinalHead]:
    """Train, save, evaluate, export and register the head of the chosen trial (whose config is ``config``) in the
    search run's child run "final-head"; returns the exported report, the test evaluation and the registered head.
    The choice (rule, observed and predicted LeRF − MoRF) goes to the run, ``best.yaml`` and ``metrics.json``."""
    chosen = choice.record
    run = start_final(
        tracker,
        {"trial": chosen.index, "choice_rule": choice.rule} | chosen.parameters | run_params(config),
        system_metrics_interval_s=10.0 if system_metrics else 0,
    )
    with run:
        run.log_metrics(
            {
                f"choice_{key}": value
                for key, value in choice.to_json().items()
                if key.endswith("trade_off") and value is not None
            }
        )
        trained = trainer(config, bench, on_step=run.log_step, progress=progress)
        save_head(trained, folder.final)
        run.log_metrics(contribution_metrics(layer_contributions(trained.explainer, config.evaluation.min_class_count)))
        test_set = prepare_eval_set(
            bench.models.classifier,
            bench.splits.test,
            config.evaluation.batch_size,
            num_workers=config.data.num_workers,
        )
        evaluation, maps = evaluate_head(trained.explainer, test_set, config.evaluation)
        run.log_metrics(evaluation.metrics())
        for path in grid_and_curve(test_set, maps, evaluation, trained, folder.final, "final head, test split"):
            run.log_artifact(path, "plots")
        configs.dump(config, folder.best, header=f"search {search}, final head chosen by {choice.describe()}")
        report = {
            "trial": chosen.index,
            "parameters": chosen.parameters,
            "choice": choice.to_json(),
            "validation": chosen.metrics,
            "test": evaluation.to_json(),
        }
        folder.metrics.write_text(json.dumps(report, indent=2))
        name = registered_model_name(config.model.backbone, config.model.auxiliary)
        version = run.log_explainer(folder.final, config, trained.explainer.classifier.preprocessing.input_size, name)
        head = FinalHead(
            search, chosen, config, evaluation.metrics(), evaluation.images, trained.coverage.summary(), name, version
        )
        run.describe_version(name, version, version_description(head), version_tags(head), head.alias)
    return report, evaluation, head
