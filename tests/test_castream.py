"""CA-Stream: the exact start (an untrained stream is the original network), attention as a distribution over
positions, only the stream trains while the backbone's BatchNorm statistics stay, saving and loading, and the
one-line errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import cli
from pipeline.castream import main as castream_main
from pipeline.config import load as load_config
from pipeline.errors import UserError
from pipeline.models.castream import CAStream, CAStreamModel, StreamLayout, parameter_count, preset_layout
from pipeline.models.classifiers import load_classifier
from pipeline.training.stream_training import (load_stream, prediction_target, save_stream, target_kind,
                                               train_stream)
from tests.toy_models import TINY_RESNET_STREAM

TINY_RESNET = "tests.toy_models:tiny_resnet"
TINY_LAYOUT = StreamLayout(tuple(TINY_RESNET_STREAM["points"]), TINY_RESNET_STREAM["pool"])


def toy_config(tmp_path: Path, **castream) -> Path:
    values = {"name": "toy-stream", "model": {"backbone": TINY_RESNET},
              "data": {"dataset": "demo", "demo_train_views": 16, "demo_eval_views": 9},
              "train": {"batch_size": 8, "device": "cpu"},
              "castream": {**TINY_RESNET_STREAM, "lr": 0.01, **castream}}
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def images(size: int, count: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def start_gap(model: CAStreamModel, dtype: torch.dtype) -> float:
    """Largest |logit difference| between an untrained stream model and its classifier, in ``dtype``."""
    model.to(dtype)
    batch = images(model.classifier.preprocessing.input_size).to(dtype)
    with torch.no_grad():
        return float((model(batch) - model.classifier(batch)).abs().max())


def test_an_untrained_stream_gives_the_backbones_logits(single_thread):
    model = CAStreamModel(load_classifier(TINY_RESNET), TINY_LAYOUT)
    assert model.stream.widths == [64, 64, 128, 256, 512]
    assert start_gap(model, torch.float64) < 1e-10
    assert start_gap(model, torch.float32) < 1e-5


@pytest.mark.system  # builds the networks at 224 px and runs them in float64 (10-50 s each here)
@pytest.mark.parametrize("backbone, widths, parameters", [
    ("resnet50", [64, 256, 512, 1024, 2048], 6_969_152),
    ("efficientnet_lite0", [32, 16, 24, 40, 80, 112, 192, 320, 1280], 2_148_336),
    ("timm:convnext_atto", [40, 80, 160, 320, 320], 273_240)])  # the token goes through the head's LayerNorm
def test_an_untrained_stream_reproduces_resnet50_lite0_and_convnext(backbone, widths, parameters):
    model = CAStreamModel(load_classifier(backbone, "random"), preset_layout(backbone))
    assert model.stream.widths == widths
    assert parameter_count(model.stream) == parameters  # the reference's sizes: 6.97 M and 2.15 M
    assert start_gap(model, torch.float64) < 1e-5


def test_attention_is_a_distribution_over_positions_and_uniform_at_the_last_stage_at_start(single_thread):
    model = CAStreamModel(load_classifier(TINY_RESNET), TINY_LAYOUT)
    batch = images(64, count=2)
    with torch.no_grad():
        output = model.run(batch, original=True)
    sides = [16, 16, 8, 4, 2]  # 64 px: stem and maxpool /4, then /2 per stage
    assert [tuple(a.shape) for a in output.attentions] == [(2, s, s) for s in sides]
    for attention in output.attentions:
        assert (attention >= 0).all()
        assert torch.allclose(attention.sum(dim=(1, 2)), torch.ones(2, dtype=attention.dtype))
    assert torch.allclose(output.attentions[-1], torch.full_like(output.attentions[-1], 1 / 4))
    assert not torch.allclose(output.attentions[0], torch.full_like(output.attentions[0], 1 / 256))
    torch.testing.assert_close(output.original, model.classifier(batch))


def test_the_classifier_is_unchanged_outside_the_stream_model(single_thread):
    model = CAStreamModel(load_classifier(TINY_RESNET), TINY_LAYOUT)
    with torch.no_grad():
        model.stream.projections[-1].weight.mul_(2.0)  # a stream that is no longer GAP
        batch = images(64)
        plain = model.classifier(batch)
        assert not torch.allclose(model(batch), plain)
        assert torch.equal(model.classifier(batch), plain)  # no hook left behind


def test_only_the_stream_trains_and_the_backbone_statistics_do_not_move(tmp_path, single_thread):
    config = load_config(toy_config(tmp_path))
    reference = load_classifier(TINY_RESNET)
    trained = train_stream(config, progress=False)
    model = trained.model
    assert trained.summary.steps == 2 and trained.summary.target == "prediction"
    assert trained.summary.parameters == parameter_count(model.stream)
    for name, value in reference.state_dict().items():  # BN running statistics and weights included
        assert torch.equal(model.classifier.state_dict()[name], value), name
    fresh = CAStream(model.stream.widths, seed=config.train.seed)
    start = fresh.state_dict()
    moved = [name for name, value in model.stream.state_dict().items() if not torch.equal(value, start[name])]
    assert "projections.3.weight" in moved and "projections.4.weight" in moved
    # gradients reach the stream only
    model.train()
    assert not model.classifier.training and not model.classifier.network.layer1[0].bn1.training
    output = model.run(images(64, count=2), original=True)
    torch.nn.functional.cross_entropy(output.logits, output.original.argmax(1)).backward()
    assert all(p.grad is None for p in model.classifier.parameters())
    assert all(p.grad is not None for p in model.stream.projections[-2:].parameters())


def test_the_command_saves_a_weights_only_stream_that_loads_back(tmp_path, capsys, single_thread):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        cli.run(castream_main, ["--experiment", str(toy_config(tmp_path)), "--set", "castream.epochs=2",
                                "--out", str(out), "--no-progress"])
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    assert "test: top-1 agreement with tests.toy_models:tiny_resnet" in printed
    saved = torch.load(out / "stream.pt", weights_only=True)
    assert saved["backbone"] == TINY_RESNET and saved["widths"] == [64, 64, 128, 256, 512]
    summary = yaml.safe_load((out / "castream.json").read_text())
    assert summary["steps"] == 4 and len(summary["epoch_losses"]) == 2
    assert 0.0 <= summary["evaluation"]["test"]["top1_agreement"] <= 1.0
    model, config = load_stream(out, device="cpu")
    assert config.castream.epochs == 2
    assert torch.equal(model.stream.token.detach(), saved["state"]["token"])


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("backbone", ["vgg16", "vit_b_16", "timm:vit_small_patch16_224"])
def test_networks_without_global_pooling_are_refused_in_one_line(backbone):
    with pytest.raises(UserError) as error:
        preset_layout(backbone)
    assert "no global average pooling" in one_line(error)


def test_a_network_without_preset_is_asked_for_its_points():
    with pytest.raises(UserError) as error:
        preset_layout(TINY_RESNET)
    assert "castream.points and castream.pool" in one_line(error)


def test_an_unknown_attachment_point_is_one_line(single_thread):
    with pytest.raises(UserError) as error:
        CAStreamModel(load_classifier(TINY_RESNET), StreamLayout(("maxpool", "layer9"), "avgpool"))
    assert "no module(s) layer9" in one_line(error)


def test_a_point_that_runs_more_than_once_is_refused(single_thread):
    with pytest.raises(UserError) as error:  # torchvision's ResNet blocks share one ReLU module
        CAStreamModel(load_classifier(TINY_RESNET), StreamLayout(("layer1.0.relu",), "avgpool"))
    assert "name modules that run once per forward pass" in one_line(error)


def test_a_pool_that_is_not_global_average_pooling_is_refused(single_thread):
    with pytest.raises(UserError) as error:  # layer4's output is a feature map, not a pooled vector
        CAStreamModel(load_classifier(TINY_RESNET), StreamLayout(("maxpool", "layer1"), "layer4"))
    assert "not a global average pooling" in one_line(error)


def test_a_stream_trained_for_another_backbone_is_refused_when_loading(tmp_path, single_thread):
    config = load_config(toy_config(tmp_path))
    trained = train_stream(config, progress=False)
    save_stream(trained, tmp_path / "saved")
    # the same module names on another network: the saved file names its backbone
    with pytest.raises(UserError) as error:
        load_stream(tmp_path / "saved", device="cpu", overrides=["model.backbone=resnet18"])
    assert "is a CA-Stream for 'tests.toy_models:tiny_resnet'" in one_line(error)
    # a stream of other widths put on this network
    other = copy.deepcopy(trained.model.stream)
    other.widths = [64, 64, 128, 256, 256]
    with pytest.raises(UserError) as error:
        CAStreamModel(load_classifier(TINY_RESNET), TINY_LAYOUT, other)
    assert "trained for another backbone" in one_line(error)


def test_a_soft_target_is_the_sharpened_softmax_and_labels_refuse_a_temperature(tmp_path):
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    assert torch.equal(prediction_target(logits, None), torch.tensor([0]))
    torch.testing.assert_close(prediction_target(logits, 0.5), torch.tensor([[4.0, 2.0, 0.0]]).softmax(1))
    config = load_config(toy_config(tmp_path, temperature=0.5, target="labels"))
    with pytest.raises(UserError) as error:
        target_kind(config)
    assert "only acts on the prediction target" in one_line(error)
    with pytest.raises(UserError) as error:
        load_config(toy_config(tmp_path, temperature=1.0))
    assert "castream.temperature" in one_line(error)
