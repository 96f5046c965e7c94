"""Class coverage end to end on the real demo models: trained classes are reported, untrained ones flagged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import cli
from pipeline import config as configs
from pipeline.data.sources import demo_photos
from pipeline.evaluate import main as evaluate_main
from pipeline.evaluation.scoring import prepare_eval_set
from pipeline.explain import UNTRAINED_MARK
from pipeline.explain import main as explain_main
from pipeline.models.coverage import ClassCoverage
from pipeline.training.head_training import Workbench, train_head
from pipeline.training.saved_head import load_explainer, save_head

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.system, pytest.mark.slow]  # trains and runs the real demo models


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workbench, Path]:
    """A demo head trained on 96 views (6 steps); a class is trained once explained 3 times."""
    config = configs.load(
        REPO / "experiments" / "demo.yaml", ["data.demo_train_views=96", "evaluation.min_class_count=3"]
    )
    bench = Workbench.load(config)
    head = save_head(train_head(config, bench, progress=False), tmp_path_factory.mktemp("demo") / "head")
    return bench, head


@pytest.fixture(scope="module")
def other_photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Bundled images of classes the demo photos never show (a galaxy field, tissue, a retina, ...)."""
    from skimage import data

    folder = tmp_path_factory.mktemp("others")
    grey = {"clock": data.clock(), "coins": data.coins(), "moon": data.moon(), "brick": data.brick()}
    photos = {
        "hubble": data.hubble_deep_field(),
        "tissue": data.immunohistochemistry(),
        "retina": data.retina(),
        "colorwheel": data.colorwheel(),
    } | {name: np.repeat(g[..., None], 3, -1) for name, g in grey.items()}
    paths = [folder / f"{name}.png" for name in photos]
    for path, photo in zip(paths, photos.values()):
        Image.fromarray(photo).save(path)
    return paths


def test_training_records_coverage_in_the_head_folder(demo):
    _, head = demo
    summary = json.loads((head / "training.json").read_text())["class_coverage"]
    counts = json.loads((head / "class_counts.json").read_text())
    assert summary["min_count"] == 3 and 0 < summary["classes_trained"] <= summary["classes_explained"] < 1000
    assert sum(counts["target_counts"].values()) == 96
    assert summary["classes_in_subset"] > summary["classes_explained"]  # S adds random classes


def test_the_demos_validation_photo_shows_a_trained_class_and_its_test_photos_do_not(demo):
    # The offline photos share a class only across the stereo pair (docs/data.md): the validation photo,
    # motorcycle_right, shows the moped of the training photo motorcycle_left; no training photo shows the test
    # photos' daisy or uniform.
    bench, head = demo
    explainer, config = load_explainer(head)
    coverage = ClassCoverage.of(explainer.head, 3)
    val = prepare_eval_set(explainer.classifier, bench.splits.val)
    test = prepare_eval_set(explainer.classifier, bench.splits.test)
    assert len(val) == len(test) == 32
    assert coverage.covered(val.targets).float().mean() >= 0.9  # a few views predicted otherwise
    assert not coverage.covered(test.targets).any()


def test_images_of_other_classes_get_low_coverage_and_are_flagged(demo, other_photos, tmp_path, capsys):
    _, head = demo
    out = tmp_path / "others.json"
    with pytest.raises(SystemExit) as stop:
        cli.run(
            evaluate_main,
            ["--head", str(head), "--images", *map(str, other_photos), "--out", str(out), "--percentages", "50"],
        )  # one ROAD percentage: the coverage is what counts here
    assert stop.value.code == 0
    report = json.loads(out.read_text())
    assert report["class_coverage"] <= 0.25 and len(report["per_image"]) == len(other_photos)
    assert sum(not image["trained"] for image in report["per_image"]) >= 6
    assert "not trained on" in capsys.readouterr().out

    chelsea = tmp_path / "chelsea.png"
    Image.fromarray(demo_photos()["chelsea"]).save(chelsea)
    with pytest.raises(SystemExit) as stop:
        cli.run(
            explain_main,
            ["--head", str(head), str(chelsea), *map(str, other_photos[:2]), "--out", str(tmp_path / "maps")],
        )
    assert stop.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    by_image = {Path(line.split(":")[0]).stem: line for line in lines if not line.startswith(" ")}
    assert UNTRAINED_MARK not in by_image["chelsea"]
    assert all(UNTRAINED_MARK in by_image[path.stem] for path in other_photos[:2])
    assert sum("warning: class" in line for line in lines) == 2
