"""`python -m pipeline.compare` on toy heads: the table, counted forward passes, coverage, MLflow nesting, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline import cli
from pipeline import config as configs
from pipeline.compare import main as compare_main
from pipeline.data.sources import build_splits
from pipeline.evaluation.scoring import evaluate_head, prepare_eval_set
from pipeline.hpo.outputs.folder import PARENT_RUN, SearchFolder
from pipeline.reports.comparison_report import protocol_notes
from pipeline.resources import DEFAULT_SEARCH_SPACE
from pipeline.tracking.runs import Tracker
from pipeline.train import main as train_main
from pipeline.training.saved_head import load_explainer
from tests.toy_models import TinyClassifier, toy_experiment, write_images

BASELINES = "gradcam,rise,random"


def train(tmp_path, experiment, name: str, *overrides: str):
    with pytest.raises(SystemExit) as stop:
        cli.run(
            train_main,
            [
                "--experiment",
                str(experiment),
                "--out",
                str(tmp_path / name),
                "--no-progress",
                "--set",
                "evaluation.percentages=[25, 50, 75]",
                *overrides,
            ],
        )
    assert stop.value.code == 0
    return tmp_path / name


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """Two heads of the toy backbone (different loss weights) and one of a backbone with other weights."""
    tmp_path = tmp_path_factory.mktemp("compare")
    experiment = toy_experiment(tmp_path, write_images(tmp_path / "images"))
    torch.manual_seed(5)
    torch.save(TinyClassifier().state_dict(), tmp_path / "other.pt")
    return (
        train(tmp_path, experiment, "a"),
        train(tmp_path, experiment, "b", "--set", "loss.lambda1=0.8", "--set", "loss.lambda2=0.1"),
        train(tmp_path, experiment, "other", "--set", f"model.backbone_weights={tmp_path / 'other.pt'}"),
    )


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        cli.run(compare_main, argv)
    captured = capsys.readouterr()
    return stop.value.code, captured.out, captured.err


def test_a_comparison_scores_heads_and_baselines_alike_and_nests_under_a_search(heads, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    parent = tracker.start_search("toy", {"backbone": "toy"})
    folder = SearchFolder(tmp_path / "runs" / "search" / "toy")
    folder.start("toy", {"name": "toy"}, DEFAULT_SEARCH_SPACE)
    folder.update_state(**{PARENT_RUN: parent})

    code, out, err = run(
        [
            "--head",
            str(heads[0]),
            "--head",
            str(heads[1]),
            "--split",
            "val",
            "--methods",
            BASELINES,
            "--target-layer",
            "features.7",
            "--rise-masks",
            "40",
            "--out",
            "out",
            "--tracking-uri",
            uri,
            "--search",
            "toy",
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "comparison.json").read_text())
    rows = {row["method"]: row for row in report["rows"]}
    assert list(rows) == ["P-TAME (a)", "P-TAME (b)", "gradcam", "rise", "random"]
    assert [rows[m]["kind"] for m in rows] == ["head", "head", "baseline", "baseline", "reference"]
    assert (rows["P-TAME (a)"]["forward_passes"], rows["P-TAME (a)"]["auxiliary_passes"]) == (1, 1)
    assert (rows["gradcam"]["forward_passes"], rows["rise"]["forward_passes"], rows["random"]["forward_passes"]) == (
        1,
        40,
        0,
    )
    assert (rows["P-TAME (a)"]["resolution"], rows["gradcam"]["resolution"], rows["rise"]["resolution"]) == (
        32 * 32,
        8 * 8,
        7 * 7,
    )
    assert 0 <= rows["P-TAME (a)"]["coverage"] <= 1 and rows["gradcam"]["coverage"] is None
    for row in rows.values():
        assert {"ad_100", "ic_15", "road_morf_auc", "road_lerf_auc", "ag", "insertion_auc", "deletion_auc"} <= row[
            "metrics"
        ].keys()
    assert report["target_layers"] == {"gradcam": "features.7"} and report["rise"]["masks"] == 40
    for name in ("P-TAME (a)", "P-TAME (b)"):
        assert sum(entry["contribution"] for entry in report["contributions"][name]) == pytest.approx(1)

    # the heads' and the random maps' ROAD/AD/IC are exactly what `pipeline.evaluate` reports
    explainer, config = load_explainer(heads[0])
    evalset = prepare_eval_set(explainer.classifier, build_splits(config.data, 32).val)
    for maps, row in (("head", "P-TAME (a)"), ("random", "random")):
        evaluation, _ = evaluate_head(explainer, evalset, config.evaluation, maps)
        scores = evaluation.road.metrics() | evaluation.adic.metrics()
        assert scores == pytest.approx({k: rows[row]["metrics"][k] for k in scores})

        if maps == "head":
            assert evaluation.class_coverage == pytest.approx(rows[row]["coverage"])

    markdown = (tmp_path / "out" / "comparison.md").read_text()
    assert "| gradcam |" in markdown and "1 + 1 aux" in markdown and "n/a |" in markdown
    assert "Layer contributions of P-TAME (a)" in markdown and "channel share" in markdown
    with (tmp_path / "out" / "comparison.csv").open() as file:
        table = list(csv.DictReader(file))
    assert [r["method"] for r in table] == list(rows) and table[2]["coverage"] == ""
    assert Image.open(tmp_path / "out" / "maps.png").size == (6 * 200, min(4, len(evalset)) * 250 + 30)
    assert "| P-TAME (b) |" in out

    client = MlflowClient(uri)
    child = client.search_runs([tracker.experiment_id], filter_string="tags.role = 'comparison'")[0]
    assert child.data.tags["mlflow.parentRunId"] == parent and child.info.status == "FINISHED"
    assert {
        "gradcam.road_morf_auc",
        "rise.deletion_auc",
        "P-TAME_a.coverage",
        "P-TAME_b.contribution.stage1",
    } <= child.data.metrics.keys()
    artifacts = {item.path for item in client.list_artifacts(child.info.run_id, "comparison")}
    assert {"comparison/comparison.md", "comparison/comparison.json", "comparison/maps.png"} <= artifacts


def test_training_json_carries_the_layer_contributions(heads):
    entries = json.loads((heads[0] / "training.json").read_text())["contributions"]
    assert [e["layer"] for e in entries] == ["stage1", "stage2", "stage3"]
    assert sum(e["contribution"] for e in entries) == pytest.approx(1)
    assert [e["channel_share"] for e in entries] == pytest.approx([8 / 36, 12 / 36, 16 / 36])


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["--methods", "gradcam,gradcam+++"], "unknown method 'gradcam+++' in --methods; choose from gradcam,"),
        (["--methods", "gradcam", "--target-layer", "features.99"], "has no layer 'features.99'; pass --target-layer"),
        (["--methods", "gradcam"], "no target-layer preset for backbone 'tests.toy_models:tiny_classifier'"),
        (["--methods", "random", "--search", "nowhere"], "no search 'nowhere'"),
        (["--methods", "random", "--limit", "0"], "--limit 0"),
    ],
)
def test_bad_input_is_one_line(heads, tmp_path, capsys, arguments, expected):
    code, _, err = run(["--head", str(heads[0]), "--split", "val", "--out", str(tmp_path / "x"), *arguments], capsys)
    assert code == 2 and expected in err and len(err.splitlines()) == 1


def test_heads_of_different_backbones_or_no_head_are_one_line_errors(heads, tmp_path, capsys):
    code, _, err = run(["--head", str(heads[0]), "--head", str(heads[2]), "--split", "val"], capsys)
    assert code == 2 and "explain different backbones" in err and "other.pt" in err and len(err.splitlines()) == 1
    code, _, err = run(["--head", str(tmp_path), "--split", "val"], capsys)
    assert code == 2 and "has no head.pt" in err and len(err.splitlines()) == 1


def test_heads_of_different_road_protocols_are_scored_under_the_first_heads_and_the_notes_say_so() -> None:
    paper = ["evaluation.imputer=telea", "evaluation.percentages=[10, 30, 50, 70]"]
    first, same, default = configs.load(overrides=paper), configs.load(overrides=paper), configs.load()
    assert protocol_notes([(Path("a"), None, first), (Path("b"), None, same)]) == [
        "ROAD protocol of every row: telea imputation, 10/30/50/70 % removed."
    ]
    scored, mixed = protocol_notes([(Path("a"), None, first), (Path("c"), None, default)])
    assert scored == "ROAD protocol of every row: telea imputation, 10/30/50/70 % removed."
    assert mixed.startswith(
        "The heads' configs name different ROAD protocols: "
        "c (noisy_linear (noise 0.01) imputation, 10/20/30/40/50/70/90 % removed) differ"
    )
    assert "--imputer/--percentages" in mixed
