"""The product-card command `python -m pipeline.search --backbone vgg16 --trials 20`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.hpo.ax_study.space import load_search_space
from pipeline.hpo.ax_study.trial_state import TrialState
from pipeline.hpo.driver import Search, SearchOptions
from pipeline.models.classifiers import build_network
from pipeline.resources import DEFAULT_SEARCH_SPACE
from tests.toy_models import TOY_SPLIT, write_images

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.system
def test_vgg16_without_cached_weights_stops_with_the_missing_weights_message(tmp_path):
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.search",
            "--backbone",
            "vgg16",
            "--trials",
            "20",
            "--out",
            str(tmp_path / "runs"),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TORCH_HOME": str(tmp_path / "torch")},
    )
    seconds = time.perf_counter() - started
    print(f"vgg16 without weights stopped after {seconds:.1f} s")
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: no weights for 'vgg16'")
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in error[0] and "weights:" in error[0]


@pytest.mark.system
@pytest.mark.slow
def test_vgg16_search_runs_with_a_weights_file(tmp_path):
    for name in ("vgg16", "resnet18"):
        network, _, _ = build_network(name, weights="random")
        torch.save(network.state_dict(), tmp_path / f"{name}.pth")
        del network
    # The fewest images a folder splits into train, validation and test (one each, under the toy split's seed and
    # share), one ROAD percentage: every
    # part of a search runs on the real vgg16 with the least CPU work.
    images = write_images(tmp_path / "images", count=3)
    base = {
        "name": "vgg16-random",
        "model": {
            "backbone": "vgg16",
            "backbone_weights": str(tmp_path / "vgg16.pth"),
            "auxiliary": "resnet18",
            "auxiliary_weights": str(tmp_path / "resnet18.pth"),
        },
        "data": {"dataset": "folder", "root": str(images), **TOY_SPLIT},
        "train": {"batch_size": 2},
        "evaluation": {"percentages": [50], "batch_size": 8},
    }
    options = SearchOptions(
        name="vgg16",
        trials=1,  # a trial, the final head and its test scores; a second trial of vgg16 would prove nothing more
        base=base,
        space=load_search_space(DEFAULT_SEARCH_SPACE),
        space_path=DEFAULT_SEARCH_SPACE,
        seed=0,
        directory=tmp_path / "runs" / "vgg16",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        progress=False,
        system_metrics=False,
    )
    search = Search(options)
    search.run()
    assert [r.status for r in search.study.records()] == [TrialState.COMPLETED]
    assert (tmp_path / "runs" / "vgg16" / "best.yaml").is_file()
