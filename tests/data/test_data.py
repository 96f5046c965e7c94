"""Splits are disjoint in images, and the search's defaults pick the paper setup or say they run the demo."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.config import DataConfig
from pipeline.data.sources import build_splits, demo_photos, path_share
from pipeline.errors import UserError
from pipeline.search import base_experiment, parse_args


def paths_of(subset) -> set[Path]:
    return {subset.dataset.paths[i] for i in subset.indices}


def make_folder(root: Path, count: int) -> Path:
    generator = torch.Generator().manual_seed(0)
    for i in range(count):
        (root / f"class{i % 3}").mkdir(parents=True, exist_ok=True)
        pixels = (torch.rand(20, 24, 3, generator=generator) * 255).byte().numpy()
        Image.fromarray(pixels).save(root / f"class{i % 3}" / f"{i}.png")
    return root


def test_a_plain_folder_is_split_three_ways_without_sharing_an_image(tmp_path):
    root = make_folder(tmp_path / "images", 45)
    splits = build_splits(DataConfig(dataset="folder", root=str(root)), 16)
    train, val, test = paths_of(splits.train), paths_of(splits.val), paths_of(splits.test)
    shares = {path: path_share(path.relative_to(root).as_posix(), 0) for path in train | val | test}
    assert val == {path for path, share in shares.items() if share < 0.1} and val
    assert test == {path for path, share in shares.items() if 0.1 <= share < 0.2} and test
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 45
    assert splits.train[0][0].shape == (3, 16, 16)


def test_adding_or_removing_a_file_moves_no_other_file_between_splits(tmp_path):
    root = make_folder(tmp_path / "images", 45)

    def split_of() -> dict[Path, str]:
        splits = build_splits(DataConfig(dataset="folder", root=str(root)), 16)
        return {path: name for name in ("train", "val", "test") for path in paths_of(getattr(splits, name))}

    before = split_of()
    Image.new("RGB", (20, 24)).save(root / "class0" / "new.png")
    (root / "class1" / "1.png").unlink()
    after = split_of()
    assert set(after) == set(before) - {root / "class1" / "1.png"} | {root / "class0" / "new.png"}
    assert all(after[path] == split for path, split in before.items() if path in after)


def test_a_folder_too_small_for_every_split_is_one_line_saying_how_many_images_are_needed(tmp_path):
    with pytest.raises(UserError, match=r"2 image\(s\) give no .* image .*give about 30 or more images") as error:
        build_splits(DataConfig(dataset="folder", root=str(make_folder(tmp_path / "two", 2))), 16)
    assert "\n" not in str(error.value)


def test_a_folder_with_train_and_val_keeps_training_images_out_of_evaluation(tmp_path):
    make_folder(tmp_path / "data" / "train", 9)
    make_folder(tmp_path / "data" / "val", 10)
    splits = build_splits(DataConfig(dataset="folder", root=str(tmp_path / "data")), 16)
    assert len(splits.train) == 9 and len(splits.val) + len(splits.test) == 10
    assert len(splits.val) and len(splits.test)
    assert not paths_of(splits.val) & paths_of(splits.test)


def test_the_demo_splits_share_no_photo_and_their_views_show_only_their_photos():
    splits = build_splits(DataConfig(dataset="demo", demo_train_views=30, demo_eval_views=12), 32)
    photos = {name: set(getattr(splits, name).names) for name in ("train", "val", "test")}
    assert not (photos["train"] & photos["val"] or photos["train"] & photos["test"] or photos["val"] & photos["test"])
    every = demo_photos()
    for name in ("train", "val", "test"):
        views = getattr(splits, name)
        allowed = {list(every).index(photo) for photo in photos[name]}
        assert {views[i][1] for i in range(len(views))} == allowed


def fake_imagenet(root: Path) -> Path:
    (root / "train" / "n0").mkdir(parents=True)
    for index in range(1000):
        (root / "val" / f"n{index:04d}").mkdir(parents=True)
    return root


def search_args(*argv: str) -> argparse.Namespace:
    return parse_args(["--trials", "1", *argv])


@pytest.mark.parametrize(
    "dataset, wanted", [("imagenet", "your ImageNet folder (with train/ and val/)"), ("folder", "your image folder")]
)
def test_a_missing_data_root_names_what_to_point_it_at(tmp_path, dataset, wanted):
    with pytest.raises(UserError) as error:
        build_splits(DataConfig(dataset=dataset, root=str(tmp_path / "missing")), 32)
    assert str(error.value) == f"data.root {str(tmp_path / 'missing')!r} does not exist; point it at {wanted}"


def test_a_backbone_with_a_paper_setup_uses_it_when_imagenet_is_found(tmp_path, monkeypatch, capsys):
    imagenet = fake_imagenet(tmp_path / "imagenet")
    monkeypatch.setenv("IMAGENET_ROOT", str(imagenet))
    base = base_experiment(search_args("--backbone", "resnet50"))
    assert base["data"] == {"dataset": "imagenet", "root": str(imagenet), "num_workers": 8}
    assert base["model"]["backbone"] == "resnet50" and base["train"]["batch_size"] == 64
    assert "paper's setup for resnet50" in capsys.readouterr().out
    explicit = base_experiment(search_args("--backbone", "vgg16", "--data", str(imagenet)))
    assert explicit["name"] == "vgg16" and explicit["data"]["root"] == str(imagenet)


def test_without_data_the_search_says_it_runs_the_demo(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)  # no data/ImageNet here
    base = base_experiment(search_args("--backbone", "vgg16"))
    assert base.get("data", {}).get("dataset", "demo") == "demo" and base["model"]["backbone"] == "vgg16"
    [line] = capsys.readouterr().out.splitlines()
    assert "offline demo photos" in line and "--data" in line
    folder = make_folder(tmp_path / "mine", 6)
    base = base_experiment(search_args("--backbone", "vgg16", "--data", str(folder)))
    assert base["data"] == {"dataset": "folder", "root": str(folder)} and not capsys.readouterr().out
