"""Splits are disjoint in images, and the search's defaults pick the paper setup or say they run the demo."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.config import DataConfig
from pipeline.data.sources import build_splits
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
    assert (len(train), len(val), len(test)) == (37, 4, 4)
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 45
    assert splits.train[0][0].shape == (3, 16, 16)
    with pytest.raises(UserError, match="at least 3"):
        build_splits(DataConfig(dataset="folder", root=str(make_folder(tmp_path / "two", 2))), 16)


def test_a_folder_with_train_and_val_keeps_training_images_out_of_evaluation(tmp_path):
    make_folder(tmp_path / "data" / "train", 9)
    make_folder(tmp_path / "data" / "val", 10)
    splits = build_splits(DataConfig(dataset="folder", root=str(tmp_path / "data")), 16)
    assert len(splits.train) == 9 and len(splits.val) == len(splits.test) == 5
    assert not paths_of(splits.val) & paths_of(splits.test)


def fake_imagenet(root: Path) -> Path:
    (root / "train" / "n0").mkdir(parents=True)
    for index in range(1000):
        (root / "val" / f"n{index:04d}").mkdir(parents=True)
    return root


def search_args(*argv: str) -> argparse.Namespace:
    return parse_args(["--trials", "1", *argv])


@pytest.mark.parametrize("dataset, wanted", [("imagenet", "your ImageNet folder (with train/ and val/)"),
                                             ("folder", "your image folder")])
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
