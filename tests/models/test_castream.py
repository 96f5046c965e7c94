"""CA-Stream: the exact start (an untrained stream is the original network), attention as a distribution over
positions, only the stream trains while the backbone's BatchNorm statistics stay, saving and loading, and the
one-line errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import cli
from pipeline.baselines.cam import CamMethod
from pipeline.castream import main as castream_main
from pipeline.compare import main as compare_main
from pipeline.config import load as load_config
from pipeline.errors import UserError
from pipeline.evaluation.comparison import castream_attention_maps
from pipeline.evaluation.scoring import evaluate_maps, load_eval_set
from pipeline.models.castream_model import CAStream, CAStreamModel, StreamLayout, parameter_count, preset_layout
from pipeline.models.classifiers import load_classifier
from pipeline.sanity import main as sanity_main
from pipeline.train import main as train_main
from pipeline.training.castream_training import load_castream, prediction_target, save_stream, train_stream
from pipeline.training.saved_head import load_explainer
from tests.toy_models import TINY_RESNET_STREAM

TINY_RESNET = "tests.toy_models:tiny_resnet"
TINY_LAYOUT = StreamLayout(tuple(TINY_RESNET_STREAM["points"]), TINY_RESNET_STREAM["pool"])


def toy_config(tmp_path: Path, **castream) -> Path:
    values = {
        "name": "toy-stream",
        "model": {"backbone": TINY_RESNET},
        "data": {"dataset": "demo", "demo_train_views": 16, "demo_eval_views": 9},
        "train": {"batch_size": 8, "device": "cpu"},
        "castream": {**TINY_RESNET_STREAM, "lr": 0.01, **castream},
    }
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
@pytest.mark.parametrize(
    "backbone, widths, parameters",
    [
        ("resnet50", [64, 256, 512, 1024, 2048], 6_969_152),
        ("efficientnet_lite0", [32, 16, 24, 40, 80, 112, 192, 320, 1280], 2_148_336),
        ("timm:convnext_atto", [40, 80, 160, 320, 320], 273_240),
    ],
)  # the token goes through the head's LayerNorm
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
    assert trained.summary.steps == 2 and trained.summary.target == "prediction (softmax moved 0.1 toward the top-1)"
    last = 512 * 512 + 512  # the last projection stays the identity
    assert trained.summary.parameters == parameter_count(model.stream) == last + trained.summary.trained_parameters
    for name, value in reference.state_dict().items():  # BN running statistics and weights included
        assert torch.equal(model.classifier.state_dict()[name], value), name
    fresh = CAStream(model.stream.widths, seed=config.train.seed)
    start = fresh.state_dict()
    moved = [name for name, value in model.stream.state_dict().items() if not torch.equal(value, start[name])]
    assert moved == [name for name in start if not name.startswith("projections.4.")]  # the last stays the identity
    # gradients reach the stream only
    model.train()
    assert not model.classifier.training and not model.classifier.network.layer1[0].bn1.training
    output = model.run(images(64, count=2), original=True)
    torch.nn.functional.cross_entropy(output.logits, output.original.argmax(1)).backward()
    assert all(p.grad is None for p in model.classifier.parameters())
    assert all(p.grad is not None for p in model.stream.projections[-2].parameters())
    paper = train_stream(load_config(toy_config(tmp_path, train_last_projection=True)), progress=False)
    assert not torch.equal(paper.model.stream.projections[-1].weight, torch.eye(512))
    assert paper.summary.trained_parameters == paper.summary.parameters


def test_the_command_saves_a_weights_only_stream_that_loads_back(tmp_path, capsys, single_thread):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        cli.run(
            castream_main,
            [
                "--experiment",
                str(toy_config(tmp_path)),
                "--set",
                "castream.epochs=2",
                "--out",
                str(out),
                "--no-progress",
            ],
        )
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    assert "test: top-1 agreement with tests.toy_models:tiny_resnet" in printed
    saved = torch.load(out / "stream.pt", weights_only=True)
    assert saved["backbone"] == TINY_RESNET and saved["widths"] == [64, 64, 128, 256, 512]
    summary = yaml.safe_load((out / "castream.json").read_text())
    assert summary["steps"] == 4 and len(summary["epoch_losses"]) == 2
    assert 0.0 <= summary["evaluation"]["test"]["top1_agreement"] <= 1.0
    model, config = load_castream(out, device="cpu")
    assert config.castream.epochs == 2
    assert torch.equal(model.stream.token.detach(), saved["state"]["token"])


@pytest.mark.slow  # MLflow creates its SQLite store (about 10 s)
def test_the_command_logs_params_steps_agreement_and_the_stream_to_mlflow(tmp_path, capsys, single_thread):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(SystemExit) as stop:
        cli.run(
            castream_main,
            [
                "--experiment",
                str(toy_config(tmp_path)),
                "--set",
                "castream.epochs=2",
                "--out",
                str(tmp_path / "out"),
                "--no-progress",
                "--tracking-uri",
                uri,
            ],
        )
    assert stop.value.code == 0, capsys.readouterr().err
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("ptame").experiment_id], "tags.role = 'castream'")[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "castream"
    assert run.data.params["config.castream.lr"] == "0.01" and run.data.params["config.model.backbone"] == TINY_RESNET
    assert run.data.params["target"] == "prediction (softmax moved 0.1 toward the top-1)"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 1, 2, 3]
    assert len(client.get_metric_history(run.info.run_id, "agreement")) == 4
    summary = json.loads((tmp_path / "out" / "castream.json").read_text())
    assert run.data.metrics["test.top1_agreement"] == summary["evaluation"]["test"]["top1_agreement"]
    assert run.data.metrics["parameters"] == summary["parameters"] > run.data.metrics["trained_parameters"] > 0
    assert run.data.metrics["seconds"] > 0
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "stream")}
    assert artifacts == {"stream/stream.pt", "stream/config.yaml", "stream/castream.json", "stream/splits.json"}


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
        load_castream(tmp_path / "saved", device="cpu", overrides=["model.backbone=resnet18"])
    assert "is a CA-Stream for 'tests.toy_models:tiny_resnet'" in one_line(error)
    # a stream of other widths put on this network
    other = copy.deepcopy(trained.model.stream)
    other.widths = [64, 64, 128, 256, 256]
    with pytest.raises(UserError) as error:
        CAStreamModel(load_classifier(TINY_RESNET), TINY_LAYOUT, other)
    assert "trained for another backbone" in one_line(error)


def test_the_prediction_target_is_the_softmax_moved_toward_the_top1():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    assert torch.equal(prediction_target(logits, 1.0), torch.tensor([0]))
    expected = 0.75 * logits.softmax(1) + 0.25 * torch.tensor([[1.0, 0.0, 0.0]])
    torch.testing.assert_close(prediction_target(logits, 0.25), expected)


def test_with_the_identity_last_projection_grad_cam_on_the_stream_is_grad_cam_on_gap(single_thread):
    """Grad-CAM's channel weights are the position mean of the gradient; the part through the attention sums to zero
    over positions (a softmax's), so only the last projection W changes them (to W^T c). Grad-CAM++ and Score-CAM
    weigh positions differently and do change."""
    model = CAStreamModel(load_classifier(TINY_RESNET), TINY_LAYOUT)
    with torch.no_grad():
        model.stream.projections[-2].weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
    batch = images(64, count=4, seed=2)
    with torch.no_grad():
        attention = model.run(batch).attentions[-1]
    assert attention.flatten(1).amin(1).max() < 0.1  # far from uniform (1/4 on the 2x2 grid)
    targets = model(batch).argmax(1)
    maps = {
        name: (
            CamMethod(name, model.classifier, "layer4", model=model)(batch, targets),
            CamMethod(name, model.classifier, "layer4")(batch, targets),
        )
        for name in ("gradcam", "gradcam++")
    }
    torch.testing.assert_close(*maps["gradcam"], atol=1e-5, rtol=1e-4)
    assert (maps["gradcam++"][0] - maps["gradcam++"][1]).abs().max() > 0.01


def compare(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        cli.run(compare_main, argv)
    captured = capsys.readouterr()
    return stop.value.code, captured.out + captured.err


@pytest.mark.slow  # trains a toy head and two toy streams, then five comparison rows (about 20 s)
def test_compare_ca_rows_score_like_pipeline_evaluate_and_refuse_another_backbones_stream(
    tmp_path, capsys, single_thread
):
    # a stream that moves away from GAP, its last projection trained as in the paper (else Grad-CAM would not change)
    experiment = toy_config(tmp_path, epochs=3, lr=0.05, top1_weight=1.0, train_last_projection=True)
    values = yaml.safe_load(experiment.read_text())
    values["model"] |= {"auxiliary": "tests.toy_models:tiny_features", "auxiliary_layers": ["stage1", "stage2"]}
    values["evaluation"] = {"percentages": [25, 50, 75]}
    experiment.write_text(yaml.safe_dump(values))
    for command, out in ((train_main, "head"), (castream_main, "stream")):
        with pytest.raises(SystemExit) as stop:
            cli.run(command, ["--experiment", str(experiment), "--out", str(tmp_path / out), "--no-progress"])
        assert stop.value.code == 0

    code, printed = compare(
        [
            "--head",
            str(tmp_path / "head"),
            "--castream",
            str(tmp_path / "stream"),
            "--split",
            "val",
            "--limit",
            "4",
            "--methods",
            "gradcam,gradcam++,scorecam",
            "--target-layer",
            "layer4",
            "--out",
            str(tmp_path / "out"),
        ],
        capsys,
    )
    assert code == 0, printed
    report = json.loads((tmp_path / "out" / "comparison.json").read_text())
    rows = {row["method"]: row for row in report["rows"]}
    assert list(rows) == [
        "P-TAME (head)",
        "gradcam",
        "gradcam++",
        "scorecam",
        "ca-gradcam",
        "ca-gradcam++",
        "ca-scorecam",
        "ca-attention",
    ]
    assert {rows[name]["kind"] for name in list(rows)[4:]} == {"castream"}
    assert [rows[name]["forward_passes"] for name in ("gradcam", "ca-gradcam", "ca-attention")] == [1, 1, 1]
    assert rows["ca-scorecam"]["forward_passes"] == rows["scorecam"]["forward_passes"] == 1 + 512  # per channel
    assert rows["gradcam"]["agreement"] is None
    assert rows["ca-attention"]["resolution"] == rows["ca-gradcam"]["resolution"] == 2 * 2
    assert "| ca-scorecam |" in printed and "CA-Stream" in (tmp_path / "out" / "comparison.md").read_text()

    # the same maps, made again and scored by `pipeline.evaluate`'s scoring, give the rows' numbers exactly
    model, config = load_castream(tmp_path / "stream", device="cpu")
    explainer, _ = load_explainer(tmp_path / "head")
    evalset = load_eval_set(explainer.classifier, config, "val", limit=4)
    images = evalset.first_images(len(evalset))
    agreement = float((model(images).argmax(1) == evalset.targets).float().mean())
    maps = {
        "ca-gradcam": CamMethod("gradcam", model.classifier, "layer4", model=model)(images, evalset.targets),
        "ca-attention": castream_attention_maps(model, images, 32),
    }
    gap = CamMethod("gradcam", model.classifier, "layer4")(images, evalset.targets)
    assert (maps["ca-gradcam"] - gap).abs().max() > 0.01, "the stream changes Grad-CAM's map"
    for name, saliency in maps.items():
        evaluation, _ = evaluate_maps(
            explainer.classifier,
            evalset,
            lambda batch, saliency=saliency: saliency[batch.first : batch.first + len(batch)],
            config.evaluation,
        )
        scores = evaluation.road.metrics() | evaluation.adic.metrics()
        assert scores == pytest.approx({key: rows[name]["metrics"][key] for key in scores}), name
        assert rows[name]["agreement"] == pytest.approx(agreement)

    other = tiny_resnet_weights(tmp_path / "other.pt")
    with pytest.raises(SystemExit):
        cli.run(
            castream_main,
            [
                "--experiment",
                str(experiment),
                "--out",
                str(tmp_path / "other"),
                "--no-progress",
                "--set",
                f"model.backbone_weights={other}",
            ],
        )
    capsys.readouterr()
    code, printed = compare(
        [
            "--head",
            str(tmp_path / "head"),
            "--castream",
            str(tmp_path / "other"),
            "--split",
            "val",
            "--methods",
            "random",
            "--out",
            str(tmp_path / "out2"),
        ],
        capsys,
    )
    error = printed.splitlines()[-1]  # after the line naming the ROAD protocol
    assert code == 2 and error.startswith("error: --castream ")
    assert f"was trained for tests.toy_models:tiny_resnet (weights {other}), but the heads explain" in error


def tiny_resnet_weights(path: Path) -> Path:
    """Weights for the tiny ResNet that differ from its own in every layer: another backbone with the same modules
    (and one that a fresh initialisation of the architecture changes everywhere)."""
    network = load_classifier(TINY_RESNET).network
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.5 * parameter.std().nan_to_num() * torch.randn(parameter.shape, generator=generator))
    torch.save(network.state_dict(), path)
    return path


@pytest.mark.slow  # trains a toy stream, then maps it at every randomisation level (about 10 s)
def test_sanity_runs_on_a_streams_maps_and_refuses_retraining_it(tmp_path, capsys, single_thread):
    weights = tiny_resnet_weights(tmp_path / "weights.pt")  # so that randomising changes every block
    with pytest.raises(SystemExit) as stop:
        cli.run(
            castream_main,
            [
                "--experiment",
                str(toy_config(tmp_path, lr=0.05)),
                "--out",
                str(tmp_path / "stream"),
                "--no-progress",
                "--set",
                f"model.backbone_weights={weights}",
            ],
        )
    assert stop.value.code == 0
    with pytest.raises(SystemExit) as stop:
        cli.run(
            sanity_main,
            [
                "--castream",
                str(tmp_path / "stream"),
                "--castream-maps",
                "gradcam++",
                "--target-layer",
                "layer4",
                "--split",
                "val",
                "--limit",
                "4",
                "--out",
                str(tmp_path / "sanity"),
            ],
        )
    printed = capsys.readouterr().out
    assert stop.value.code == 0, printed
    report = json.loads((tmp_path / "sanity" / "sanity_reevaluate.json").read_text())
    levels = report["levels"]
    assert report["castream"]["maps"] == "gradcam++" and report["head"] is None
    assert levels[0]["ssim_mean"] == pytest.approx(1.0) and levels[0]["coverage"] is None
    assert (levels[1]["block"], levels[-1]["block"]) == ("conv1", "fc")  # bottom-up, the whole network
    assert levels[-1]["ssim_mean"] < 0.9 and "coverage    n/a" in printed
    with pytest.raises(SystemExit) as stop:
        cli.run(sanity_main, ["--ca-stream", str(tmp_path / "stream"), "--protocol", "retrain", "--split", "val"])
    err = capsys.readouterr().err  # the old flag still works for one release, with a notice
    assert "note: --ca-stream is renamed --castream; the old name goes in the next release" in err
    assert stop.value.code == 2 and "with its trained weights kept" in err
