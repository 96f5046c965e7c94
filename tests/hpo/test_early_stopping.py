"""The early-stopping rule on synthetic checkpoint scores, its replay, and a stopped trial in the Ax study."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline import cli
from pipeline import config as configs
from pipeline.errors import UserError
from pipeline.hpo.ax_study.early_stopping import StoppingRule, replay, stopping_rule
from pipeline.hpo.ax_study.records import TrialRecord
from pipeline.hpo.ax_study.space import load_search_space
from pipeline.hpo.ax_study.study import INTERRUPTED, Study
from pipeline.hpo.ax_study.trial_state import TrialState
from pipeline.hpo.driver import Search
from pipeline.hpo.outputs.folder import PARENT_RUN, SearchFolder
from pipeline.hpo.trials import trial_worker
from pipeline.resources import DEFAULT_SEARCH_SPACE
from pipeline.search import main as search_main
from pipeline.training.head_training import train_head
from tests.hpo.helpers import REPO, options, trial_runs
from tests.toy_models import TOY_MODEL, toy_base, write_images

SIGNS = {"road_morf_auc": -1.0, "road_lerf_auc": 1.0}
NOISE = 0.02


def scores(morf: float, lerf: float, noise: float = NOISE) -> dict[str, float]:
    return {"road_morf_auc": morf, "road_morf_auc_se": noise, "road_lerf_auc": lerf, "road_lerf_auc_se": noise}


def trial(
    index: int,
    final: tuple[float, float],
    at_50: tuple[float, float],
    generator: str = "BoTorch",
    status: TrialState = TrialState.COMPLETED,
) -> TrialRecord:
    return TrialRecord(index, status, {"lambda1": 0.1}, scores(*final), None, generator, {50: scores(*at_50)})


RIVALS = (
    trial(0, (0.30, 0.65), (0.34, 0.62), "Sobol"),
    trial(1, (0.32, 0.64), (0.35, 0.61), "Sobol"),
    trial(2, (0.45, 0.70), (0.46, 0.68), "Sobol"),
)


def test_a_trial_beaten_by_enough_completed_trials_by_more_than_the_noise_stops():
    rule = StoppingRule(SIGNS, 2, RIVALS)
    reason = rule.reason(50, scores(0.47, 0.55))  # trial 2's MoRF at 50 % is better by less than the noise
    assert reason.startswith(
        "at 50 % of training, 2 completed trials (0, 1) scored better on road_morf_auc and "
        "road_lerf_auc by more than the noise"
    )


@pytest.mark.parametrize(
    "at_50, why",
    [
        ((0.37, 0.58), "only trial 0 beats it: trial 1's MoRF is better by 0.02, within the noise hypot(0.02, 0.02)"),
        ((0.33, 0.30), "no rival's MoRF at 50 % is better"),
    ],
)
def test_a_trial_within_the_noise_or_beaten_by_too_few_goes_on(at_50, why):
    assert StoppingRule(SIGNS, 2, RIVALS).reason(50, scores(*at_50)) is None, why


def test_a_trial_on_the_front_of_final_scores_goes_on_even_when_checkpoints_beat_it():
    rivals = (trial(0, (0.50, 0.50), (0.20, 0.80)), trial(1, (0.50, 0.50), (0.21, 0.79)))
    rule = StoppingRule(SIGNS, 2, rivals)
    assert rule.reason(50, scores(0.40, 0.60)) is None  # no final score dominates (0.40, 0.60): it is on the front
    assert rule.reason(50, scores(0.60, 0.40)) is not None


def test_no_rule_for_sobol_trials_or_without_early_stop_and_rivals_are_the_completed_trials():
    records = [
        *RIVALS,
        trial(3, (0.5, 0.5), (0.5, 0.5), status=TrialState.RUNNING),
        trial(4, (0, 0), (0, 0), "Sobol", status=TrialState.RUNNING),
    ]
    on = configs.CheckpointConfig(early_stop=True, dominating=3)
    rule = stopping_rule(records, 3, SIGNS, on)
    assert [rival.index for rival in rule.rivals] == [0, 1, 2] and rule.dominating == 3
    assert stopping_rule(records, 4, SIGNS, on) is None
    assert stopping_rule(records, 3, SIGNS, configs.CheckpointConfig()) is None


def test_replay_stops_in_index_order_against_the_trials_it_kept():
    records = [
        *RIVALS,
        trial(3, (0.70, 0.20), (0.60, 0.30)),
        trial(4, (0.31, 0.64), (0.35, 0.61)),
        trial(5, (0.75, 0.25), (0.62, 0.31)),
    ]
    assert replay(records, SIGNS, 2) == {3: 50, 5: 50}
    assert replay(records, SIGNS, 4) == {5: 50}  # trial 4 completes and is the fourth rival for trial 5


def test_checkpoint_percentages_must_increase_and_early_stop_needs_checkpoints():
    with pytest.raises(UserError, match=r"checkpoints.at = \[75, 50\]: give distinct percentages"):
        configs.from_dict({"checkpoints": {"at": [75, 50]}})
    with pytest.raises(UserError, match="needs checkpoints to stop at"):
        configs.from_dict({"checkpoints": {"at": [], "early_stop": True}})
    with pytest.raises(UserError, match="checkpoints.at"):
        configs.from_dict({"checkpoints": {"at": [0]}})


def test_a_stopped_trial_is_early_stopped_in_ax_with_its_partial_values_reason_and_checkpoints(tmp_path: Path):
    space = load_search_space(DEFAULT_SEARCH_SPACE)
    study = Study.open(tmp_path, space, seed=1)
    first, _ = study.next_trial()
    study.complete(first, scores(0.3, 0.6) | {"train_seconds": 2.0}, {50: scores(0.35, 0.55)})
    second, _ = study.next_trial()
    study.stop_early(second, scores(0.6, 0.3), {50: scores(0.6, 0.3)}, "beaten at 50 %")
    for reopened in (study, Study.open(tmp_path, space, seed=1)):
        done, stopped = reopened.records()
        assert (stopped.status, stopped.reason) == (TrialState.EARLY_STOPPED, "beaten at 50 %")
        assert stopped.metrics["road_morf_auc"] == pytest.approx(0.6) and stopped.checkpoints == {50: scores(0.6, 0.3)}
        assert done.checkpoints == {50: scores(0.35, 0.55)} and done.metrics["train_seconds"] == 2.0
        assert reopened.finished_count == 2 and [r.index for r in reopened.pareto()] == [first]
    data = study.client._experiment.lookup_data().df
    assert set(data[data.trial_index == second].step) == {50.0}


# Checkpoint scores (MoRF, LeRF) by the order in which trials start, across processes: the third trial is beaten
# everywhere, the fourth beats everything, the others sit between.
SCRIPTED_CHECKPOINTS = {2: (1.0, 0.0), 3: (0.0, 1.0)}


def scripted_checkpoints(markers: Path, config, bench, **kwargs):
    """Train as usual, but score this trial's checkpoints with `SCRIPTED_CHECKPOINTS` (by start order)."""
    call = next(number for number in itertools.count() if _claim(markers / f"call-{number}"))
    morf, lerf = SCRIPTED_CHECKPOINTS.get(call, (0.5, 0.5))
    real = trial_worker.checkpoint_scores
    trial_worker.checkpoint_scores = lambda evaluation: scores(morf, lerf, noise=0.01)
    try:
        return train_head(config, bench, **kwargs)
    finally:
        trial_worker.checkpoint_scores = real


def _claim(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def scripted_search(tmp_path: Path, ray_address: str | None = None) -> Search:
    """Four scripted trials (two Sobol, then BoTorch), in this process or, with ``ray_address``, on one Ray worker."""
    space_path = tmp_path / "space.yaml"  # two Sobol trials, then BoTorch
    space_path.write_text(
        DEFAULT_SEARCH_SPACE.read_text().replace("initialization_trials: 5", "initialization_trials: 2")
    )
    settings = dataclasses.replace(
        options(tmp_path, trials=4), ray_address=ray_address, space=load_search_space(space_path), space_path=space_path
    )
    settings.base["checkpoints"] = {"early_stop": True, "dominating": 1}
    settings.base["train"]["batch_size"] = 1  # 6 steps: the checkpoints at 50 and 75 % fall on steps 3 and 4
    markers = tmp_path / "markers"
    markers.mkdir()
    return Search(settings, trainer=functools.partial(scripted_checkpoints, markers))


def check_stopped_search(search: Search, output: str) -> None:
    records = search.study.records()
    assert sorted(r.status for r in records) == [TrialState.COMPLETED] * 3 + [TrialState.EARLY_STOPPED], records
    [stopped] = [r for r in records if r.status == TrialState.EARLY_STOPPED]
    assert stopped.generator == "BoTorch" and stopped.checkpoints.keys() == {50}
    assert stopped.reason.startswith("at 50 % of training, ")
    assert "scored better on road_morf_auc and road_lerf_auc" in stopped.reason
    assert (stopped.metrics["road_morf_auc"], stopped.metrics["road_lerf_auc"]) == (1.0, 0.0)
    front = [r for r in records if r.checkpoints.get(50, {}).get("road_morf_auc") == 0.0]
    # the trial that beats everything at its checkpoints goes on
    assert [r.status for r in front] == [TrialState.COMPLETED]
    data = search.study.client._experiment.lookup_data().df
    assert set(data[data.trial_index == stopped.index].step) == {50.0}
    runs = trial_runs(search.options.tracking_uri, search.folder.state[PARENT_RUN])
    client = MlflowClient(search.options.tracking_uri)
    run = runs[f"trial-{stopped.index:03d}"]
    assert run.info.status == "KILLED" and run.data.tags["early_stop_reason"] == stopped.reason
    assert "failure_reason" not in run.data.tags
    assert [m.step for m in client.get_metric_history(run.info.run_id, "checkpoint_road_morf_auc")] == [50]
    done = runs[f"trial-{front[0].index:03d}"]
    assert done.info.status == "FINISHED"
    curve = client.get_metric_history(done.info.run_id, "checkpoint_road_lerf_auc")
    assert [(m.step, m.value) for m in curve][:2] == [(50, 1.0), (75, 1.0)] and curve[2].step == 100
    assert f"trial {stopped.index:3d} [BoTorch]" in output and "EARLY_STOPPED: at 50 %" in output
    assert "[50 %: MoRF 1.0000 LeRF 0.0000]" in output


@pytest.mark.slow  # a whole search with BoTorch generations
def test_a_dominated_trial_is_stopped_counted_and_recorded_in_ax_and_mlflow(tmp_path, capsys):
    search = scripted_search(tmp_path)
    search.run()
    check_stopped_search(search, capsys.readouterr().out)


@pytest.mark.system
@pytest.mark.slow
def test_a_dominated_trial_on_a_ray_worker_is_stopped_the_same_way(ray_address, tmp_path, capsys):
    search = scripted_search(tmp_path, ray_address)
    search.run()
    check_stopped_search(search, capsys.readouterr().out)


@pytest.mark.system
@pytest.mark.slow
def test_a_search_killed_during_a_checkpoint_resumes_without_losing_anything(tmp_path, capsys):
    hanging_model = TOY_MODEL | {"backbone": "tests.toy_models:hanging_tiny_classifier"}
    base = toy_base(write_images(tmp_path / "images"), hanging_model)
    base["train"]["batch_size"] = 1  # 6 steps: checkpoints at steps 3 and 4
    experiment = tmp_path / "toy.yaml"
    experiment.write_text(yaml.safe_dump(base))
    command = [
        sys.executable,
        "-m",
        "pipeline.search",
        "--experiment",
        str(experiment),
        "--trials",
        "3",
        "--name",
        "killed",
        "--out",
        str(tmp_path / "search"),
        "--no-progress",
        "--early-stop",
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    hanging = tmp_path / "hanging"  # trial 0 scores at 50 %, 75 % and at the end; trial 1's checkpoint at 50 % hangs
    env = os.environ | {"PYTHONPATH": str(REPO), "TOY_HANG_AT": "4", "TOY_HANG_FILE": str(hanging)}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not hanging.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert hanging.exists() and process.poll() is None, "the search should hang in trial 1's first checkpoint"
    process.send_signal(signal.SIGKILL)
    process.wait()
    folder = tmp_path / "search" / "killed"
    space = load_search_space(DEFAULT_SEARCH_SPACE)
    before = Study.read(folder, space).records()
    assert [r.status for r in before] == [TrialState.COMPLETED, TrialState.RUNNING]
    assert before[0].checkpoints.keys() == {50, 75}

    with pytest.raises(SystemExit) as rerun:  # the same command again, in this process (no hang): it resumes
        cli.run(search_main, command[3:])
    assert rerun.value.code == 0, capsys.readouterr()
    after = Study.read(folder, space).records()
    assert after[0] == before[0]  # the completed trial, its checkpoint scores included, is kept as it was
    assert (after[1].status, after[1].reason) == (TrialState.FAILED, INTERRUPTED)
    assert sum(r.status.finished for r in after) == 3 and len(after) == 4
    assert all(r.checkpoints.keys() == {50, 75} for r in after if r.status == TrialState.COMPLETED)
    runs = trial_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", SearchFolder(folder).state[PARENT_RUN])
    assert runs["trial-001"].info.status == "FAILED" and "interrupted" in runs["trial-001"].data.tags["failure_reason"]
    assert runs["trial-000"].info.status == "FINISHED"
