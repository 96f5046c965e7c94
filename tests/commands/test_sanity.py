"""The model-parameter randomisation test: exact block matching, restoration, SSIM, both protocols, CLI errors."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from pipeline import cli
from pipeline.data.sources import build_splits
from pipeline.errors import UserError
from pipeline.evaluation.mprt import run_mprt
from pipeline.evaluation.scoring import prepare_eval_set
from pipeline.models.classifiers import build_network
from pipeline.models.randomisation import BLOCK_PRESETS, Block, blocks_for, randomisable
from pipeline.sanity import main as sanity_main
from pipeline.train import main as train_main
from pipeline.training.saved_head import load_explainer
from tests.toy_models import TinyClassifier, toy_experiment, write_images


@pytest.fixture(scope="module")
def toy_head(tmp_path_factory):
    """A head on a toy backbone whose weights differ from its architecture's fresh initialisation."""
    tmp_path = tmp_path_factory.mktemp("sanity")
    torch.manual_seed(5)
    torch.save(TinyClassifier().state_dict(), tmp_path / "backbone.pt")
    experiment = toy_experiment(tmp_path, write_images(tmp_path / "images"))
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
                f"model.backbone_weights={tmp_path / 'backbone.pt'}",
                "--set",
                "evaluation.min_class_count=1",
            ],
        )
    assert stop.value.code == 0
    return tmp_path / "head"


def test_blocks_match_exact_module_prefixes_never_substrings():
    block = Block("blocks.1", ("blocks.1",))
    assert block.owns("blocks.1") and block.owns("blocks.1.0.conv.weight")
    assert not block.owns("blocks.10.0.conv.weight") and not block.owns("blocks.11")


def test_the_efficientnet_lite_preset_owns_every_tensor_once_from_input_to_output():
    network, _, _ = build_network("efficientnet_lite0", "random")
    blocks = BLOCK_PRESETS["efficientnet_lite0"]
    owners = [[i for i, block in enumerate(blocks) if block.owns(key)] for key in network.state_dict()]
    assert all(len(found) == 1 for found in owners)
    order = [found[0] for found in owners]
    assert order == sorted(order) and order[0] == 0 and order[-1] == len(blocks) - 1


def test_unknown_blocks_are_user_errors():
    network, _, _ = build_network("tests.toy_models:tiny_classifier")
    with pytest.raises(UserError, match="'features.9' is not a module of the backbone"):
        blocks_for("toy", network, "features.0,features.9")
    with pytest.raises(UserError, match="hold no weights"):
        blocks_for("toy", network, "features.2")  # a ReLU
    assert [b.modules for b in blocks_for("toy", network, "features.0+features.1,fc")] == [
        ("features.0", "features.1"),
        ("fc",),
    ]


def test_randomisation_is_cumulative_and_restored():
    network, _, _ = build_network("tests.toy_models:tiny_classifier")
    with torch.no_grad():
        network.features[0].weight.add_(1.0)  # differs from the fresh initialisation
    before = {k: v.clone() for k, v in network.state_dict().items()}
    with randomisable(network, "tests.toy_models:tiny_classifier", seed=0) as randomisation:
        assert randomisation.randomise(Block("features.0", ("features.0",))) == network.features[0].weight.numel()
        assert not torch.equal(network.features[0].weight, before["features.0.weight"])
        assert torch.equal(network.fc.weight, before["fc.weight"])
    assert all(torch.equal(v, before[k]) for k, v in network.state_dict().items())


@pytest.mark.parametrize("protocol", ["reevaluate", "retrain"])
def test_ssim_is_one_when_nothing_is_randomised_and_drops_when_the_backbone_is(toy_head, protocol):
    explainer, config = load_explainer(toy_head, fold=False)  # as pipeline.sanity loads it
    weights = {k: v.clone() for k, v in explainer.classifier.network.state_dict().items()}
    evalset = prepare_eval_set(explainer.classifier, build_splits(config.data, 32).val)
    blocks = blocks_for(config.model.backbone, explainer.classifier.network, "features.0+features.1,features.3,fc")
    levels, maps = run_mprt(explainer, config, evalset, blocks, protocol)
    assert [level.block for level in levels] == ["none (original)", "features.0+features.1", "features.3", "fc"]
    assert levels[0].ssim == [1.0] * len(evalset) and levels[0].values_changed == 0
    assert levels[-1].ssim_mean < 0.9 and levels[-1].values_changed > 0
    assert len(maps) == len(levels) and maps[0].shape == (len(evalset), *evalset.size)
    restored = explainer.classifier.network.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in weights.items())


def test_the_command_writes_json_and_a_figure(toy_head, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.run(
            sanity_main,
            [
                "--head",
                str(toy_head),
                "--split",
                "val",
                "--blocks",
                "features.0+features.1,fc",
                "--out",
                str(tmp_path / "sanity"),
            ],
        )
    assert stop.value.code == 0
    report = json.loads((tmp_path / "sanity" / "sanity_reevaluate.json").read_text())
    assert report["protocol"] == "reevaluate" and "only changes which class" in report["protocol_description"]
    assert [level["block"] for level in report["levels"]] == ["none (original)", "features.0+features.1", "fc"]
    assert Image.open(tmp_path / "sanity" / "sanity_reevaluate.png").size[0] >= 800
    assert "protocol reevaluate" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["--blocks", "features.9"], "'features.9' is not a module of the backbone"),
        (["--limit", "0"], "--limit 0"),
    ],
)
def test_bad_input_is_one_line(toy_head, tmp_path, capsys, arguments, expected):
    with pytest.raises(SystemExit) as stop:
        cli.run(sanity_main, ["--head", str(toy_head), "--split", "val", "--out", str(tmp_path / "s"), *arguments])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and expected in error and len(error.splitlines()) == 1


def test_a_folder_without_a_head_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.run(sanity_main, ["--head", str(tmp_path), "--split", "val"])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "has no head.pt" in error and len(error.splitlines()) == 1
