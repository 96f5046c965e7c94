"""What a reviewer reads in MLflow, built without a server: links, descriptions, tags and the alias."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.utils.validation import _validate_model_alias_name, _validate_model_alias_name_reserved

from pipeline import config as configs
from pipeline.hpo.ax_study.records import TrialRecord
from pipeline.hpo.ax_study.space import load_search_space
from pipeline.hpo.ax_study.trial_state import TrialState
from pipeline.hpo.outputs.descriptions import (
    FinalHead,
    search_alias,
    search_description,
    version_description,
    version_tags,
)
from pipeline.resources import DEFAULT_SEARCH_SPACE
from pipeline.tracking.links import experiment_url, review_link

CONFIG = configs.from_dict(
    {
        "name": "demo",
        "model": {"backbone": "efficientnet_lite0", "auxiliary": "efficientnet_lite1"},
        "loss": {"lambda1": 0.09, "lambda2": 0.91, "lambda_area": 2.0},
        "evaluation": {"percentages": [20, 50, 80]},
    }
)
TEST_SCORES = {"road_morf_auc": 0.2912, "road_lerf_auc": 0.6571, "ad_100": 31.5, "ic_100": 12.5, "class_coverage": 0.75}


def record(index: int, morf: float, lerf: float) -> TrialRecord:
    return TrialRecord(
        index,
        TrialState.COMPLETED,
        {"lambda1": 0.09, "lambda2": 0.91, "lambda_area": 2.0},
        {"road_morf_auc": morf, "road_lerf_auc": lerf},
        None,
        "Sobol",
    )


def final_head(search: str = "review-demo") -> FinalHead:
    coverage = {
        "num_classes": 1000,
        "min_count": 5,
        "classes_trained": 12,
        "classes_explained": 20,
        "classes_in_subset": 40,
    }
    return FinalHead(
        search,
        record(2, 0.3, 0.6),
        CONFIG,
        TEST_SCORES,
        9,
        coverage,
        "ptame-efficientnet_lite0-efficientnet_lite1",
        "4",
    )


def test_links_open_the_training_view_on_a_server_or_after_starting_the_ui(monkeypatch, tmp_path: Path) -> None:
    assert (
        experiment_url("http://mlflow-host:5000/", "7")
        == "http://mlflow-host:5000/#/experiments/7?workflowType=machine_learning"
    )
    assert review_link("https://mlflow.example", "3") == (
        "MLflow: https://mlflow.example/#/experiments/3?workflowType=machine_learning"
    )
    monkeypatch.chdir(tmp_path)
    local = review_link("sqlite:///mlflow.db", "1")
    assert f"ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'} --host 127.0.0.1 --port 5000`" in local
    assert local.endswith("then open http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning")
    assert "--backend-store-uri sqlite:////tmp/x.db " in review_link("sqlite:////tmp/x.db", "1")


@pytest.mark.parametrize(
    ("search", "alias"),
    [
        ("review-demo", "review-demo"),
        ("demo-efficientnet_lite0-x.y", "demo-efficientnet_lite0-x_y"),
        ("latest", "search-latest"),
        ("V12", "search-V12"),
        ("v1.5", "v1_5"),
        ("", "_"),
    ],
)
def test_search_alias_is_an_alias_mlflow_accepts(search: str, alias: str) -> None:
    assert search_alias(search) == alias
    _validate_model_alias_name(alias)
    _validate_model_alias_name_reserved(alias)


def test_version_tags_and_description_say_what_the_version_is() -> None:
    head = final_head()
    assert head.alias == "review-demo" and head.uri == "models:/ptame-efficientnet_lite0-efficientnet_lite1@review-demo"
    tags = version_tags(head)
    assert tags == {
        "search": "review-demo",
        "trial": "2",
        "backbone": "efficientnet_lite0",
        "auxiliary": "efficientnet_lite1",
        "lambda1": "0.09",
        "lambda2": "0.91",
        "lambda3": "0",
        "lambda_area": "2",
        "loss_form": "variation=paper, S=paper",
        "road_protocol": "noisy_linear (noise 0.01) imputation, 20/50/80 % removed",
    }
    description = version_description(head)
    for text in (
        "**efficientnet_lite0**",
        "**efficientnet_lite1**",
        "search `review-demo` (trial 2)",
        "λ1 = 0.09, λ2 = 0.91, λ3 = 0, λ_area = 2",
        "(variation=paper, S=paper)",
        "the demo photos (384 training",
        "1 epoch(s)",
        "9 images; ROAD: noisy_linear (noise 0.01) imputation",
        "MoRF AUC 0.2912",
        "LeRF AUC 0.6571",
        "12 of 1000 classes",
        "0.75 of the test images",
        f'load_model("{head.uri}")',
    ):
        assert text in description, text


def test_search_description_grows_from_the_setup_to_the_chosen_head() -> None:
    space = load_search_space(DEFAULT_SEARCH_SPACE)
    start = search_description("review-demo", CONFIG, space, 20, [], [])
    for text in (
        "**P-TAME search `review-demo`**",
        "`lambda1` → `loss.lambda1`: range [0, 1]",
        "`lambda_area` → `loss.lambda_area`: choice 0.5, 1, 2",
        "constraint: lambda1 + lambda2 <= 1",
        "road_morf_auc (minimize)",
        "**ROAD protocol**: noisy_linear (noise 0.01) imputation, 20/50/80 % removed",
        "**Loss**: variation=paper, S=paper",
        "area_epsilon: 0.0005",
        "**Trials**: 0 of 20 completed.",
    ):
        assert text in start, text
    assert "**Checkpoints**" not in start  # none without early stopping unless checkpoints.at asks for them
    with_curves = configs.from_dict(configs.to_dict(CONFIG) | {"checkpoints": {"at": [50, 75]}})
    assert (
        "**Checkpoints**: ROAD on the first 256 validation images at 50/75 % of training; no early stopping"
        in search_description("review-demo", with_curves, space, 20, [], [])
    )
    assert "lambda1: 0.09" not in start and "Pareto" not in start and "Chosen" not in start

    failed = TrialRecord(1, TrialState.FAILED, {}, {}, "diverged", "Sobol")
    stopped = TrialRecord(3, TrialState.EARLY_STOPPED, {}, {}, "beaten", "BoTorch")
    trials = [record(0, 0.3, 0.6), failed, record(2, 0.25, 0.55), stopped]
    end = search_description("review-demo", CONFIG, space, 20, trials, [trials[0], trials[2]], final_head())
    assert "**Trials**: 2 of 20 completed, 1 stopped early, 1 failed." in end
    assert "- trial 0 (lambda1=0.09, lambda2=0.91, lambda_area=2): road_morf_auc 0.3000, road_lerf_auc 0.6000" in end
    assert "**Chosen**: trial 2" in end and "(9 images): MoRF AUC 0.2912" in end
    assert "Registered as `models:/ptame-efficientnet_lite0-efficientnet_lite1@review-demo` (version 4)." in end
