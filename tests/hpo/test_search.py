"""The search end to end on tiny models: trials, failures, resume after SIGKILL, final head and export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import cli
from pipeline import config as configs
from pipeline.errors import UserError
from pipeline.hpo.ax_study.space import load_search_space
from pipeline.hpo.ax_study.study import Study
from pipeline.hpo.ax_study.trial_state import TrialState
from pipeline.hpo.driver import Search
from pipeline.hpo.outputs.exporting import export
from pipeline.hpo.outputs.folder import SearchFolder
from pipeline.resources import DEFAULT_SEARCH_SPACE
from pipeline.search import main as search_main
from pipeline.search import parse_args
from pipeline.training import loop
from pipeline.training.head_training import train_head
from pipeline.training.loss import LossTerms
from tests.hpo.helpers import options
from tests.toy_models import toy_base, write_images

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a whole search in this process: trials, final head, registered model, export
def test_a_raising_and_a_nan_trial_are_marked_failed_and_the_search_completes(tmp_path, monkeypatch):
    calls = {"count": 0}

    def flaky_trainer(config, bench, **kwargs):
        calls["count"] += 1
        if calls["count"] == 1:
            raise RuntimeError("injected failure")
        if calls["count"] == 2:

            def nan_step(*args, **kw):
                nan = torch.tensor(float("nan"), requires_grad=True)
                return LossTerms(nan, nan, nan, nan)

            with monkeypatch.context() as patch:
                patch.setattr(loop, "training_step", nan_step)
                return train_head(config, bench, **kwargs)
        return train_head(config, bench, **kwargs)

    search = Search(options(tmp_path, trials=2), trainer=flaky_trainer)
    report = search.run()
    records = search.study.records()
    assert [r.status for r in records] == [TrialState.FAILED] * 2 + [TrialState.COMPLETED] * 2
    assert "injected failure" in records[0].reason
    assert "TrainingDiverged" in records[1].reason and "nan" in records[1].reason
    directory = tmp_path / "search" / "toy"
    best = configs.load(directory / "best.yaml")
    assert best.loss.lambda1 == pytest.approx(records[report["trial"]].parameters["lambda1"])
    assert torch.load(directory / "final" / "head.pt", weights_only=True)
    metrics = json.loads((directory / "metrics.json").read_text())
    assert metrics["test"]["metrics"]["road_morf_auc"] >= 0
    choice = metrics["choice"]  # the rule and the chosen trial's observed (and, with a model, predicted) value
    assert choice["rule"] == "predicted" and choice["trial"] == report["trial"]  # the space's default rule
    chosen = records[report["trial"]].metrics
    assert choice["observed_trade_off"] == pytest.approx(chosen["road_lerf_auc"] - chosen["road_morf_auc"])
    assert isinstance(choice["predicted_trade_off"], float)
    assert set(choice) == {"rule", "trial", "observed_trade_off", "predicted_trade_off", "note"}
    first_line = (directory / "best.yaml").read_text().splitlines()[0]
    assert first_line.startswith("# search toy, final head chosen by the largest model-predicted LeRF − MoRF")
    assert f"trial {report['trial']}, LeRF − MoRF observed {choice['observed_trade_off']:.4f}" in first_line
    exported = export(SearchFolder(directory))
    assert configs.load(exported) == best
    assert torch.equal(
        torch.load(exported.with_name("head.pt"), weights_only=True)["fuse.weight"],
        torch.load(directory / "final" / "head.pt", weights_only=True)["fuse.weight"],
    )


def test_a_search_stops_after_several_failures_in_a_row(tmp_path):
    def broken(config, bench, **kwargs):
        raise ValueError("always broken")

    search = Search(options(tmp_path, trials=2), trainer=broken)
    with pytest.raises(Exception, match="3 trials failed in a row"):
        search.run()
    assert [r.status for r in search.study.records()] == [TrialState.FAILED] * 3


@pytest.mark.system
@pytest.mark.slow
def test_sigkill_then_rerun_resumes_without_losing_or_duplicating_trials(tmp_path, capsys):
    base = toy_base(write_images(tmp_path / "images"))
    experiment = tmp_path / "toy.yaml"
    experiment.write_text(yaml.safe_dump(base))
    command = [
        sys.executable,
        "-m",
        "pipeline.search",
        "--experiment",
        str(experiment),
        "--trials",
        "4",
        "--name",
        "killed",
        "--out",
        str(tmp_path / "search"),
        "--no-progress",
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    snapshot = tmp_path / "search" / "killed" / "ax_experiment.json"
    env = os.environ | {"PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    while process.poll() is None and sum("-> MoRF" in line for line in output) < 2:
        output.append(process.stdout.readline())
    assert process.poll() is None, "".join(output)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = snapshot.read_bytes()
    exported = export(SearchFolder(snapshot.parent), tmp_path / "interrupted.yaml")
    assert configs.load(exported).model.backbone == base["model"]["backbone"]
    assert snapshot.read_bytes() == saved, "exporting must not change the search"
    before = Study.read(snapshot.parent, load_search_space(DEFAULT_SEARCH_SPACE)).records()
    done_before = [r.index for r in before if r.status == TrialState.COMPLETED]
    assert len(done_before) >= 2 and all(r.status in (TrialState.RUNNING, TrialState.COMPLETED) for r in before)

    with pytest.raises(SystemExit) as rerun:  # the same command again, run in this process: it resumes
        cli.run(search_main, command[3:])
    assert rerun.value.code == 0, capsys.readouterr()
    records = Study.read(snapshot.parent, load_search_space(DEFAULT_SEARCH_SPACE)).records()
    assert [r.index for r in records] == list(range(len(records)))
    assert sum(r.status == TrialState.COMPLETED for r in records) == 4
    assert all(r.status in (TrialState.COMPLETED, TrialState.FAILED) for r in records)
    assert all(r.status == TrialState.COMPLETED for r in records if r.index in done_before)
    interrupted = [r for r in records if r.status == TrialState.FAILED]
    assert all("interrupted" in r.reason for r in interrupted)
    arms = [tuple(sorted(r.parameters.items())) for r in records]
    assert len(set(arms)) == len(arms)
    assert (tmp_path / "search" / "killed" / "best.yaml").is_file()


@pytest.mark.parametrize("name", ["../../x", "a/b", "/tmp/x", "..", ".", "", "a\\b"])
def test_a_search_name_that_is_a_path_is_refused(name):
    with pytest.raises(UserError, match="is not a search name"):
        parse_args(["--name", name])


def test_a_plain_search_name_is_accepted():
    assert parse_args(["--name", "r50.v2-lr_search"]).name == "r50.v2-lr_search"


@pytest.mark.system
def test_an_unreachable_tracking_server_stops_the_search_in_one_line_before_any_work(tmp_path):
    command = [
        sys.executable,
        "-m",
        "pipeline.search",
        "--tracking-uri",
        "http://127.0.0.1:9",
        "--trials",
        "1",
        "--experiment",
        "experiments/demo.yaml",
        "--out",
        str(tmp_path / "runs"),
    ]
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=tmp_path, env=os.environ | {"PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300
    )
    elapsed = time.perf_counter() - started
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: cannot reach the MLflow tracking server at http://127.0.0.1:9 (Connection refused)")
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # no search folder, no mlflow.db
    # MLflow alone retries for minutes; nearly all of this is importing torch, MLflow and Ax (about 8 s on a
    # busy 2-core machine), the check itself takes milliseconds (tests/tracking/test_tracking.py times it).
    assert elapsed < 30, f"{elapsed:.1f} s"
