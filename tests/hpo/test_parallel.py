"""Parallel trials on real Ray: distinct trials per worker, GPUs per worker, a killed worker, a killed
search process and its resume, the folder lock, Ax's Sobol wait, two searches on one MLflow server.

The tests share the session's local Ray instance (`ray_address` in conftest.py: 2 CPUs and 3 logical GPUs; Ray
hands them out and sets CUDA_VISIBLE_DEVICES, the trials still run on the CPU) and its MLflow server; one of the
two concurrent searches starts its own Ray, as the command does by default.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from pipeline import cli
from pipeline.errors import UserError
from pipeline.hpo.ax_study.space import load_search_space
from pipeline.hpo.ax_study.study import INTERRUPTED, AwaitingData, Study
from pipeline.hpo.ax_study.trial_state import TrialState
from pipeline.hpo.driver import Search
from pipeline.hpo.outputs.folder import PARENT_RUN
from pipeline.hpo.trials.ray_pool import RayPool, SlotSize, crowding_note, slot_size, slots_at_once
from pipeline.locking import search_lock
from pipeline.resources import DEFAULT_SEARCH_SPACE
from pipeline.search import main, parse_args
from pipeline.training.head_training import train_head
from tests.hpo.helpers import options, trial_runs
from tests.toy_models import TOY_MODEL, toy_base, write_images

REPO = Path(__file__).resolve().parents[2]


def command_env() -> dict[str, str]:
    """The environment for a search command; read late, as the fixture's Ray sets RAY_AUTH_MODE to join it."""
    return os.environ | {"PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}


def wait_for_ax_then_kill_the_first(markers: Path, config, bench, **kwargs):
    """A trial that trains only once Ax has answered "data required" to a third worker (so the first two
    trials run side by side), and that SIGKILLs its own worker when it is the first to finish training."""
    deadline = time.monotonic() + 120
    while not (markers / "ax-waited").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    trained = train_head(config, bench, **kwargs)
    try:
        handle = os.open(markers / "killed", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return trained
    os.write(handle, str(os.getpid()).encode())
    os.close(handle)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.system
@pytest.mark.slow
def test_three_workers_wait_for_ax_run_distinct_trials_on_own_gpus_and_survive_a_killed_worker(
    ray_address, tmp_path, monkeypatch
):
    markers = tmp_path / "markers"
    markers.mkdir()
    space_path = tmp_path / "space.yaml"  # a Sobol budget of 2: the third worker must wait for a result
    space_path.write_text(
        DEFAULT_SEARCH_SPACE.read_text().replace("initialization_trials: 5", "initialization_trials: 2")
    )
    settings = replace(
        options(tmp_path, trials=3), parallel=3, space=load_search_space(space_path), space_path=space_path
    )
    next_trial = Study.next_trial

    def noting_the_wait(study):
        try:
            return next_trial(study)
        except AwaitingData:
            (markers / "ax-waited").touch()
            raise

    monkeypatch.setattr(Study, "next_trial", noting_the_wait)
    search = Search(settings, trainer=functools.partial(wait_for_ax_then_kill_the_first, markers))
    search.run()

    records = search.study.records()
    assert (markers / "ax-waited").exists()
    assert sorted(r.status for r in records) == [TrialState.COMPLETED] * 3 + [TrialState.FAILED]
    [failed] = [r for r in records if r.status == TrialState.FAILED]
    killed_pid = (markers / "killed").read_text()
    assert failed.index in (0, 1) and f"pid {killed_pid} on" in failed.reason and "died" in failed.reason, failed
    arms = [tuple(sorted(r.parameters.items())) for r in records]
    assert len(set(arms)) == len(arms)

    runs = trial_runs(settings.tracking_uri, search.folder.state[PARENT_RUN])
    assert sorted(runs) == ["final-head"] + [f"trial-{index:03d}" for index in range(4)]
    client = MlflowClient(settings.tracking_uri)
    for record in records:
        run = runs[f"trial-{record.index:03d}"]
        if record.status == TrialState.COMPLETED:
            assert run.info.status == "FINISHED"
            assert run.data.metrics["road_morf_auc"] == pytest.approx(record.metrics["road_morf_auc"])
            assert len(client.get_metric_history(run.info.run_id, "loss")) >= 1  # steps sent back by the worker
            assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "plots")) == [
                "plots/explanations.png",
                "plots/road_curve.png",
            ]
        else:
            assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == failed.reason
    gpus = [runs[name].data.tags["worker.cuda_visible_devices"] for name in ("trial-000", "trial-001")]
    assert len(set(gpus)) == 2 and set(gpus) <= {"0", "1", "2"}, "trials 0 and 1 ran side by side on own GPUs"
    assert runs["final-head"].info.status == "FINISHED"


def search_command(experiment: Path, tmp_path: Path, name: str, trials: int, *options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline.search",
        "--experiment",
        str(experiment),
        "--trials",
        str(trials),
        "--name",
        name,
        "--out",
        str(tmp_path / "search"),
        "--no-progress",
        *options,
    ]


def toy_experiment(tmp_path: Path, images: int = 8, model: dict | None = None) -> Path:
    experiment = tmp_path / "toy.yaml"
    base = toy_base(write_images(tmp_path / "images", images), model)
    experiment.write_text(yaml.safe_dump(base))
    return experiment


@pytest.mark.system
@pytest.mark.slow
def test_killing_the_search_with_two_trials_in_flight_loses_only_them_and_a_second_search_is_refused(
    ray_address, tmp_path, capsys
):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Trials of several seconds (the trial's one training step waits SLOW_STEP_S and leaves the CPU to the other
    # processes), so that the second worker is ready long before the first trial ends.
    slow = TOY_MODEL | {"backbone": "tests.toy_models:slow_tiny_classifier"}
    command = search_command(
        toy_experiment(tmp_path, model=slow),
        tmp_path,
        "killed",
        3,
        "--parallel",
        "2",
        "--ray-address",
        ray_address,
        "--tracking-uri",
        tracking_uri,
    )
    first = subprocess.Popen(
        command, cwd=REPO, env=command_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output: list[str] = []
    in_flight: set[int] = set()
    completed = 0
    refused = None
    while first.poll() is None:
        line = first.stdout.readline()
        output.append(line)
        words = line.split()
        if line.startswith("trial") and words[2] == "started":
            in_flight.add(int(words[1]))
            if refused is None:  # the first holds the folder's lock now: the same command again, in this process
                with pytest.raises(SystemExit) as second:
                    cli.run(main, command[3:])
                refused = second.value.code, capsys.readouterr().err
            if len(in_flight) == 2 and completed:
                first.send_signal(signal.SIGKILL)
                break
        elif line.startswith("trial") and words[2].startswith("["):
            in_flight.discard(int(words[1]))
            completed += 1
    first.wait()
    assert first.returncode == -signal.SIGKILL, "".join(output)
    assert refused is not None and refused[0] == 2, refused
    assert "search 'killed' is already running (pid " in refused[1], refused

    folder = tmp_path / "search" / "killed"
    space = load_search_space(DEFAULT_SEARCH_SPACE)
    before = Study.read(folder, space).records()
    running = [r.index for r in before if r.status == TrialState.RUNNING]
    assert sorted(running) == sorted(in_flight) and len(running) == 2, (before, "".join(output))

    # The same command again, run in this process (already connected to the cluster): it resumes.
    with pytest.raises(SystemExit) as rerun:
        cli.run(main, command[3:])
    assert rerun.value.code == 0, capsys.readouterr()
    records = Study.read(folder, space).records()
    assert sum(r.status == TrialState.COMPLETED for r in records) == 3
    assert [r.index for r in records if r.status == TrialState.FAILED] == running
    assert all(r.reason == INTERRUPTED for r in records if r.status == TrialState.FAILED)
    arms = [tuple(sorted(r.parameters.items())) for r in records]
    assert len(set(arms)) == len(arms)
    runs = trial_runs(tracking_uri, json.loads((folder / "state.json").read_text())["parent_run_id"])
    for index in running:
        run = runs[f"trial-{index:03d}"]
        assert run.info.status == "FAILED" and run.data.tags["failure_reason"].startswith("interrupted")
    assert sum(run.info.status == "FINISHED" for name, run in runs.items() if name.startswith("trial")) == 3


@pytest.mark.system
@pytest.mark.slow
def test_two_searches_at_once_log_every_run_and_artifact_to_one_tracking_server(
    ray_address, mlflow_server, tmp_path, capsys
):
    """Two search commands at once, two trials each on two workers: one joins the session's Ray cluster, packing two
    trials per GPU, and runs in this process (connected to that cluster; test_killing_... runs a command that joins it
    from outside); the other runs as a user runs it and starts its own Ray. Both send their workers' steps straight
    to the server. (A worker's second trial: test_three_workers_...)"""
    uri = mlflow_server
    experiment = toy_experiment(tmp_path)
    commands = {
        "joined": search_command(
            experiment,
            tmp_path,
            "joined",
            2,
            "--parallel",
            "2",
            "--gpus-per-trial",
            "0.5",
            "--ray-address",
            ray_address,
            "--tracking-uri",
            uri,
        ),
        "own-ray": search_command(experiment, tmp_path, "own-ray", 2, "--parallel", "2", "--tracking-uri", uri),
    }
    as_a_user = {k: v for k, v in command_env().items() if k != "RAY_AUTH_MODE"}  # Ray's own default
    with open(tmp_path / "own-ray.log", "w") as log:
        own_ray = subprocess.Popen(commands["own-ray"], cwd=REPO, env=as_a_user, stdout=log, stderr=subprocess.STDOUT)
    try:
        with pytest.raises(SystemExit) as joined:
            cli.run(main, commands["joined"][3:])
        own_ray.wait(timeout=900)
    finally:
        if own_ray.poll() is None:  # this test failed first: stop the other search (it stops its Ray)
            own_ray.terminate()
            own_ray.wait(timeout=60)
    outputs = {"joined": capsys.readouterr().out, "own-ray": (tmp_path / "own-ray.log").read_text()}
    assert joined.value.code == 0, outputs["joined"]
    assert own_ray.returncode == 0, outputs["own-ray"]
    assert "WARNING" not in outputs["own-ray"], outputs["own-ray"]  # e.g. Ray's token-auth notice

    client = MlflowClient(uri)
    gpus = {"joined": {"0", "1", "2"}, "own-ray": {None}}  # this machine has no GPU for Ray to find
    for name in commands:
        parent = json.loads((tmp_path / "search" / name / "state.json").read_text())["parent_run_id"]
        assert client.get_run(parent).info.status == "FINISHED"
        parent_artifacts = {a.path for a in client.list_artifacts(parent)}
        assert {"ax", "search_space", "best.yaml", "metrics.json"} <= parent_artifacts, parent_artifacts
        runs = trial_runs(uri, parent)
        assert sorted(runs) == ["final-head", "trial-000", "trial-001"], outputs[name]
        for run_name, run in runs.items():
            run_id = run.info.run_id
            assert run.info.status == "FINISHED", run_name
            assert len(client.get_metric_history(run_id, "loss")) >= 1, run_name
            assert [a.path for a in client.list_artifacts(run_id, "plots")] == [
                "plots/explanations.png",
                "plots/road_curve.png",
            ], run_name
            if run_name.startswith("trial"):
                assert {"road_morf_auc", "road_lerf_auc", "ad_100"} <= set(run.data.metrics), run_name
                assert run.data.tags.get("worker.cuda_visible_devices") in gpus[name], run_name
        assert client.list_artifacts(runs["final-head"].info.run_id, "head")


@pytest.mark.parametrize(
    ("nodes", "parallel", "gpus", "expected"),
    [
        ([{"CPU": 2}], 2, None, SlotSize(0.0, 1, 1)),
        ([{"CPU": 2}], 3, None, SlotSize(0.0, 2 / 3, 1)),
        ([{"CPU": 16}, {"CPU": 8}], 4, 0, SlotSize(0.0, 6, 6)),
        ([{"CPU": 16, "GPU": 8}], 8, None, SlotSize(1.0, 2.0, 2)),
        ([{"CPU": 16, "GPU": 4}], 8, 0.5, SlotSize(0.5, 2.0, 2)),
        ([{"CPU": 32, "GPU": 4}, {"CPU": 8, "GPU": 2}], 6, 2, SlotSize(2.0, 8.0, 8)),
    ],
)
def test_slot_size(nodes, parallel, gpus, expected):
    assert slot_size(nodes, parallel, gpus) == expected


def test_more_gpu_workers_than_fit_at_once_are_noted_with_the_share_that_fits():
    one_gpu = [{"CPU": 16, "GPU": 1}]
    note = crowding_note(one_gpu, 2, slot_size(one_gpu, 2, None))
    assert note == (
        "note: --parallel 2 with 1 GPU per trial: the cluster's 1 GPU(s) run 1 trial(s) at a time, the "
        "other workers wait; --gpus-per-trial 0.5 shares the GPUs between all of them (if the models "
        "fit in memory)"
    )
    assert crowding_note(one_gpu, 2, slot_size(one_gpu, 2, 0.5)) is None
    two_nodes = [{"CPU": 32, "GPU": 4}, {"CPU": 8, "GPU": 2}]
    assert slots_at_once(two_nodes, slot_size(two_nodes, 3, 2)) == 3
    assert crowding_note(two_nodes, 3, slot_size(two_nodes, 3, 2)) is None
    assert "run 3 trial(s) at a time" in crowding_note(two_nodes, 4, slot_size(two_nodes, 4, 2))
    assert crowding_note([{"CPU": 2}], 3, slot_size([{"CPU": 2}], 3, None)) is None  # CPU slots share cores


def test_gpus_that_no_node_has_are_refused_instead_of_waiting_forever():
    with pytest.raises(UserError, match=r"--gpus-per-trial 1: the Ray cluster has no GPUs \(2 CPU cores"):
        slot_size([{"CPU": 2}], 2, 1)
    with pytest.raises(UserError, match="no node of the Ray cluster has that many GPUs .* at most 2"):
        slot_size([{"CPU": 8, "GPU": 2}, {"CPU": 8, "GPU": 1}], 2, 4)


@pytest.mark.system
def test_a_pool_wanting_more_gpus_than_a_node_has_stops_before_starting_workers(ray_address):
    with pytest.raises(UserError, match="--gpus-per-trial 4: no node of the Ray cluster has that many GPUs"):
        RayPool(toy_base(Path("unused")), train_head, 2, 4, None, None)
    assert ray.is_initialized()  # it joined the module's Ray, so it leaves it connected


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--parallel", "0"], "--parallel 0: give the number of trials to run at once, at least 1"),
        (["--gpus-per-trial", "0.5"], "--gpus-per-trial 0.5 sizes Ray workers; add --parallel N"),
        (["--parallel", "2", "--gpus-per-trial", "1.5"], "--gpus-per-trial 1.5: a trial trains on one GPU; give 1, "),
        (
            ["--parallel", "2", "--gpus-per-trial", "2"],
            r"--gpus-per-trial 2: .* use more GPUs with --parallel N \(N "
            r"trials at once, one GPU each\)",
        ),
        (["--gpus-per-trial", "2"], "--gpus-per-trial 2: a trial trains on one GPU"),
        (["--parallel", "2", "--gpus-per-trial", "-1"], "--gpus-per-trial -1: a trial trains on one GPU"),
        (["--parallel", "2", "--ray-address", "127.0.0.1:1"], "--ray-address 127.0.0.1:1: nothing answers there"),
        (["--parallel", "2", "--ray-address", "ray://127.0.0.1:1"], "--ray-address ray://127.0.0.1:1: nothing answers"),
    ],
)
def test_bad_parallel_options_stop_with_one_line(arguments, message):
    with pytest.raises(UserError, match=message) as error:
        main(["--data", "demo", "--trials", "2", *arguments])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("gpus", ["0", "0.5", "1"])
def test_a_gpu_share_of_at_most_one_is_accepted(gpus):
    assert parse_args(["--data", "demo", "--parallel", "2", "--gpus-per-trial", gpus]).gpus_per_trial == float(gpus)


def test_a_second_holder_of_a_search_folder_is_refused(tmp_path):
    with search_lock(tmp_path / "search", "mine"):
        with pytest.raises(UserError, match=f"search 'mine' is already running \\(pid {os.getpid()} on "):
            with search_lock(tmp_path / "search", "mine"):
                pass
    with search_lock(tmp_path / "search", "mine"):  # released on exit
        pass
