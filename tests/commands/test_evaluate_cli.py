"""`python -m pipeline.evaluate` and `python -m pipeline.explain` on a tiny trained head."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from pipeline import cli
from pipeline.evaluate import main as evaluate_main
from pipeline.explain import main as explain_main
from pipeline.train import main as train_main
from tests.toy_models import toy_experiment


@pytest.fixture
def trained_head(tmp_path, image_folder):
    experiment = toy_experiment(tmp_path, image_folder)
    with pytest.raises(SystemExit) as stop:
        cli.run(
            train_main,
            [
                "--experiment",
                str(experiment),
                "--out",
                str(tmp_path / "head"),
                "--no-progress",
                "--set",
                "evaluation.percentages=[25, 50, 75]",
            ],
        )
    assert stop.value.code == 0
    return tmp_path / "head"


@pytest.mark.parametrize("maps", ["head", "random", "center"])
def test_evaluate_writes_metrics_json_and_a_road_curve(trained_head, tmp_path, maps, capsys):
    out = tmp_path / f"{maps}.json"
    with pytest.raises(SystemExit) as stop:
        cli.run(evaluate_main, ["--head", str(trained_head), "--split", "val", "--maps", maps, "--out", str(out)])
    assert stop.value.code == 0
    report = json.loads(out.read_text())
    assert report["maps"] == maps and report["images"] == 3  # the 12 images whose path hashes into validation
    assert report["held_out"] == {"images": 3, "seen_images": 0, "held_out": True, "split_changes": [], "unchecked": []}
    expected = {"road_morf_auc", "road_lerf_auc", "road_morf_25", "road_lerf_75", "ad_15", "ic_50"}
    assert expected <= report["metrics"].keys()
    assert report["road"]["percentages"] == [25, 50, 75]
    assert Image.open(out.with_suffix(".png")).size[0] > 100
    assert "MoRF AUC" in capsys.readouterr().out


def test_evaluate_takes_the_road_protocol_and_names_it(trained_head, tmp_path, capsys):
    out = tmp_path / "telea.json"
    with pytest.raises(SystemExit) as stop:
        cli.run(
            evaluate_main,
            [
                "--head",
                str(trained_head),
                "--split",
                "val",
                "--imputer",
                "telea",
                "--percentages",
                "10",
                "30",
                "50",
                "70",
                "--out",
                str(out),
            ],
        )
    assert stop.value.code == 0
    report = json.loads(out.read_text())
    assert report["road"]["protocol"] == "telea imputation, 10/30/50/70 % removed"
    assert report["evaluation"]["imputer"] == "telea" and report["road"]["percentages"] == [10, 30, 50, 70]
    assert "ROAD (telea imputation, 10/30/50/70 % removed): MoRF AUC" in capsys.readouterr().out


def test_evaluate_and_explain_take_plain_image_files(trained_head, tmp_path):
    files = []
    for index, colour in enumerate([(200, 20, 20), (20, 200, 20), (20, 20, 200)]):
        files.append(tmp_path / "mine" / f"{index}.png")
        files[-1].parent.mkdir(exist_ok=True)
        Image.new("RGB", (40, 48), colour).save(files[-1])
    with pytest.raises(SystemExit) as stop:
        cli.run(
            evaluate_main,
            [
                "--head",
                str(trained_head),
                "--images",
                *map(str, files),
                "--limit",
                "2",
                "--out",
                str(tmp_path / "mine.json"),
            ],
        )
    assert stop.value.code == 0
    assert json.loads((tmp_path / "mine.json").read_text())["images"] == 2
    with pytest.raises(SystemExit) as stop:
        cli.run(
            explain_main,
            ["--head", str(trained_head), *map(str, files), "--out", str(tmp_path / "maps"), "--class", "3"],
        )
    assert stop.value.code == 0
    written = sorted((tmp_path / "maps").glob("*.png"))
    assert [p.stem for p in written] == sorted(p.stem for p in files)
    assert Image.open(written[0]).size[0] == 32


def test_a_corrupt_image_is_named_in_the_error(trained_head, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    with pytest.raises(SystemExit) as stop:
        cli.run(explain_main, ["--head", str(trained_head), str(broken), "--out", str(tmp_path / "maps")])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert "cannot read image" in error and "broken.jpg" in error
