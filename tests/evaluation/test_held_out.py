"""Split records (``splits.json``) and the checks on use: a changed split and seen images are refused, and scored
only with the flags that accept them, then marked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from pipeline import cli
from pipeline import config as configs
from pipeline.compare import main as compare_main
from pipeline.data.manifest import SPLITS_FILE, SplitRecord, pixel_digest, seen_images
from pipeline.data.sources import DEMO_SPLITS, build_splits, demo_photos, path_share
from pipeline.errors import UserError
from pipeline.evaluate import main as evaluate_main
from pipeline.hpo.ax_study.space import load_search_space
from pipeline.hpo.driver import Search, SearchOptions
from pipeline.resources import DEFAULT_SEARCH_SPACE
from pipeline.train import main as train_main
from pipeline.training.head_training import Workbench
from tests.toy_models import TOY_SPLIT, toy_base, toy_experiment, write_images


def run(main, *argv: str) -> int:
    with pytest.raises(SystemExit) as stop:
        cli.run(main, list(argv))
    return stop.value.code


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A toy head trained on a folder of 8 images, and that folder."""
    tmp_path = tmp_path_factory.mktemp("held-out")
    images = write_images(tmp_path / "images")
    assert (
        run(
            train_main,
            "--experiment",
            str(toy_experiment(tmp_path, images)),
            "--out",
            str(tmp_path / "head"),
            "--no-progress",
            "--set",
            "evaluation.percentages=[50]",
        )
        == 0
    )
    return tmp_path / "head", images


def a_file_in_the_test_split(folder: Path, name: str) -> Path:
    """A new image in ``folder`` whose path hashes into the test split of the toy seed and share."""
    for index in range(1000):
        path = folder / "a" / f"{name}{index}.png"
        share = path_share(path.relative_to(folder).as_posix(), TOY_SPLIT["seed"])
        if TOY_SPLIT["holdout"] <= share < 2 * TOY_SPLIT["holdout"]:
            Image.new("RGB", (36, 36), (200, 30, 30)).save(path)
            return path
    raise AssertionError("no name hashed into the test split")


def test_a_head_records_what_each_split_holds(head):
    directory, images = head
    record = SplitRecord.read(directory)
    values = json.loads((directory / SPLITS_FILE).read_text())
    assert values["digest"] == record.digest and len(values["digest"]) == 64
    config = configs.load(directory / "config.yaml")
    splits = build_splits(config.data, 32)
    assert record == SplitRecord.of(splits)
    sources = {name: {entry["source"] for entry in record.splits[name]} for name in ("train", "val", "test")}
    assert sum(map(len, sources.values())) == 8 and all(sources.values())
    assert not (sources["train"] & sources["val"] or sources["train"] & sources["test"])
    assert all(not Path(source).is_absolute() for source in sources["test"])


def test_a_changed_test_split_is_refused_then_scored_with_the_flag_and_marked(head, tmp_path, capsys):
    directory, images = head
    added = a_file_in_the_test_split(images, "changed")
    try:
        out = tmp_path / "evaluation.json"
        assert run(evaluate_main, "--head", str(directory), "--split", "test", "--out", str(out)) == 2
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0
        assert f"the test split changed since {directory} was trained: 1 added (first: a/{added.name})" in error
        assert "--allow-changed-split" in error
        assert (
            run(evaluate_main, "--head", str(directory), "--split", "test", "--out", str(out), "--allow-changed-split")
            == 0
        )
        held_out = json.loads(out.read_text())["held_out"]
        assert held_out["split_changes"] and held_out["split_changes"][0].endswith(f"1 added (first: a/{added.name})")
        assert "the split changed since training" in capsys.readouterr().out
    finally:
        added.unlink()


def test_seen_images_are_refused_then_scored_with_the_flag_and_marked(head, tmp_path, capsys):
    directory, images = head
    trained_on = images / SplitRecord.read(directory).splits["train"][0]["source"]
    fresh = tmp_path / "fresh.png"
    Image.new("RGB", (36, 36), (10, 200, 30)).save(fresh)
    out = tmp_path / "evaluation.json"
    assert run(evaluate_main, "--head", str(directory), "--images", str(fresh), str(trained_on), "--out", str(out)) == 2
    error = capsys.readouterr().err
    assert f"1 of the 2 images to score were trained or selected on by {directory} (first: {trained_on})" in error
    assert "--allow-seen" in error
    assert (
        run(
            compare_main,
            "--head",
            str(directory),
            "--images",
            str(trained_on),
            "--methods",
            "random",
            "--out",
            str(tmp_path / "comparison"),
        )
        == 2
    )
    assert "trained or selected on" in capsys.readouterr().err
    assert (
        run(
            evaluate_main,
            "--head",
            str(directory),
            "--images",
            str(fresh),
            str(trained_on),
            "--out",
            str(out),
            "--allow-seen",
        )
        == 0
    )
    held_out = json.loads(out.read_text())["held_out"]
    assert (held_out["seen_images"], held_out["held_out"]) == (1, False)
    assert "SEEN: 1 of 2 scored images were trained or selected on" in capsys.readouterr().out
    assert run(evaluate_main, "--head", str(directory), "--images", str(fresh), "--out", str(out)) == 0
    assert json.loads(out.read_text())["held_out"]["held_out"] is True


def test_a_demo_photo_saved_to_a_file_is_recognised_by_its_pixels(tmp_path):
    record = SplitRecord.of(
        build_splits(configs.DataConfig(dataset="demo", demo_train_views=14, demo_eval_views=2), 32)
    )
    trained, held_out = DEMO_SPLITS["train"][0], DEMO_SPLITS["test"][0]
    assert [e["source"] for e in record.splits["val"]] == list(DEMO_SPLITS["val"])
    for name in (trained, held_out):
        Image.fromarray(demo_photos()[name]).save(tmp_path / f"{name}.png")
    assert [e["source"] for e in record.splits["test"]] == list(DEMO_SPLITS["test"])
    assert record.splits["train"][0]["sha256"] == pixel_digest(demo_photos()[trained])
    assert seen_images(record, [tmp_path / f"{trained}.png", tmp_path / f"{held_out}.png"]) == [
        tmp_path / f"{trained}.png"
    ]


def test_a_search_refuses_to_resume_on_changed_data(tmp_path):
    images = write_images(tmp_path / "images")
    options = SearchOptions(
        name="toy",
        trials=1,
        base=toy_base(images),
        space=load_search_space(DEFAULT_SEARCH_SPACE),
        space_path=DEFAULT_SEARCH_SPACE,
        seed=0,
        directory=tmp_path / "runs" / "toy",
    )
    first = Search(options)
    first.bench = Workbench.load(first.base_config)
    first.folder.directory.mkdir(parents=True)
    first._record_splits()
    assert (first.folder.directory / SPLITS_FILE).is_file()
    added = a_file_in_the_test_split(images, "later")
    again = Search(options)
    again.bench = Workbench.load(again.base_config)
    with pytest.raises(
        UserError,
        match=rf"the data of search 'toy' changed since it started \(test: 1 added "
        rf"\(first: a/{added.name}\)\)",
    ):
        again._record_splits()
