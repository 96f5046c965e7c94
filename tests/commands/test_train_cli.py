"""`python -m pipeline.train`: outputs, reproduction from the written config, and clear errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline import cli
from pipeline import config as configs
from pipeline.errors import UserError
from pipeline.models.classifiers import load_classifier
from pipeline.train import main as train_main
from pipeline.training.saved_head import load_explainer
from tests.toy_models import toy_experiment

REPO = Path(__file__).resolve().parents[2]


def exit_with(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        cli.run(train_main, argv)
    return stop.value.code, capsys.readouterr().err


def test_train_writes_a_weights_only_head_and_a_config_that_reproduces_it(tmp_path, image_folder, capsys):
    experiment = toy_experiment(tmp_path, image_folder)
    code, _ = exit_with(["--experiment", str(experiment), "--out", str(tmp_path / "a"), "--no-progress"], capsys)
    assert code == 0
    first = torch.load(tmp_path / "a" / "head.pt", weights_only=True)
    resolved = configs.load(tmp_path / "a" / "config.yaml")
    assert resolved.data.root == str(image_folder) and resolved.loss.lambda2 == 0.3
    code, _ = exit_with(
        ["--config", str(tmp_path / "a" / "config.yaml"), "--out", str(tmp_path / "b"), "--no-progress"], capsys
    )
    assert code == 0
    second = torch.load(tmp_path / "b" / "head.pt", weights_only=True)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not any("classifier" in k or "auxiliary" in k for k in first)


def test_a_head_trained_on_another_device_loads_on_the_best_one_here(tmp_path, image_folder, capsys):
    code, _ = exit_with(
        ["--experiment", str(toy_experiment(tmp_path, image_folder)), "--out", str(tmp_path / "a"), "--no-progress"],
        capsys,
    )
    assert code == 0
    config = tmp_path / "a" / "config.yaml"
    config.write_text(config.read_text().replace("device: auto", "device: cuda"))  # as if trained on a GPU host
    assert configs.load(config).train.device == "cuda"
    explainer, _ = load_explainer(tmp_path / "a")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert {p.device.type for p in explainer.head.parameters()} == {expected}
    with pytest.raises(UserError, match=r"--device 'gpu' is not a device; use cpu, cuda, cuda:N or auto"):
        load_explainer(tmp_path / "a", "gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"--device 'cuda': no CUDA device is available here; use cpu or auto"):
            load_explainer(tmp_path / "a", "cuda")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.backbone=no_such_net", "unknown model 'no_such_net'"),
        ("loss.lambda1=1.5", "loss.lambda1 = 1.5 is outside [0, 1]"),
        ("loss.lambda1=0.8", "loss.lambda1 + loss.lambda2 = 1.1 > 1"),
        ("loss.colour=3", "unknown key 'loss.colour'"),
        ("train.batch_size=many", "train.batch_size: expected int, got 'many'"),
    ],
)
def test_bad_values_exit_with_a_message_naming_the_problem(tmp_path, image_folder, capsys, override, expected):
    experiment = toy_experiment(tmp_path, image_folder)
    code, err = exit_with(["--experiment", str(experiment), "--set", override], capsys)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_a_data_folder_without_images_is_reported(tmp_path, image_folder, capsys):
    (tmp_path / "empty" / "class").mkdir(parents=True)
    experiment = toy_experiment(tmp_path, tmp_path / "empty")
    code, err = exit_with(["--experiment", str(experiment)], capsys)
    assert code == 2 and "no images found under" in err and "empty" in err


def test_malformed_yaml_is_reported_with_its_line(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("loss:\n  lambda1: [0.3\n")
    code, err = exit_with(["--experiment", str(broken)], capsys)
    assert code == 2 and "is not valid YAML at line" in err


def test_missing_pretrained_weights_name_the_model_the_cache_and_the_weights_option(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-cache"))
    with pytest.raises(UserError) as error:
        load_classifier("resnet18")
    message = str(error.value)
    assert "'resnet18'" in message and str(tmp_path / "torch-cache") in message and "weights:" in message


def test_a_weights_file_replaces_the_download(tmp_path):
    network = load_classifier("mnasnet0_5", weights="random").network
    torch.save(network.state_dict(), tmp_path / "mnas.pth")
    loaded = load_classifier("mnasnet0_5", weights=str(tmp_path / "mnas.pth"))
    assert torch.equal(loaded.network.layers[0].weight, network.layers[0].weight)
    with pytest.raises(UserError, match="does not fit model 'resnet18'"):
        load_classifier("resnet18", weights=str(tmp_path / "mnas.pth"))


@pytest.mark.system
def test_the_real_command_exits_non_zero_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.train", "--set", "model.backbone=vgg17"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("error: unknown model 'vgg17'")
