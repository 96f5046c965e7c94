"""The persistent Ax study, driven by synthetic objectives (no training)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.hpo.ax_study import ax_seam
from pipeline.hpo.ax_study.choice import choose
from pipeline.hpo.ax_study.records import TrialRecord, pareto_front, trade_off
from pipeline.hpo.ax_study.space import SearchSpace, load_search_space
from pipeline.hpo.ax_study.study import INTERRUPTED, SNAPSHOT_NAME, Study, objective_thresholds
from pipeline.hpo.ax_study.trial_state import TrialState
from pipeline.hpo.outputs.trial_table import format_table, study_table
from pipeline.hpo.trials.trial_configs import trial_config

ROOT = Path(__file__).resolve().parents[2]
SIGNS = {"road_morf_auc": -1.0, "road_lerf_auc": 1.0}


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return load_search_space(ROOT / "search_spaces" / "ptame.yaml")


def synthetic(parameters: dict) -> dict[str, float]:
    """A smooth stand-in for ROAD: MoRF best at λ1 = 0.3, LeRF grows with λ2 and λ_area."""
    morf = (parameters["lambda1"] - 0.3) ** 2 + 0.1 * parameters["lambda2"]
    lerf = 0.5 * parameters["lambda2"] + 0.1 * parameters["lambda_area"]
    return {"road_morf_auc": morf, "road_lerf_auc": lerf, "loss": 1.0}


def record(index: int, morf: float, lerf: float, status: TrialState = TrialState.COMPLETED) -> TrialRecord:
    return TrialRecord(
        index, status, {"lambda1": 0.2, "lambda2": 0.3}, {"road_morf_auc": morf, "road_lerf_auc": lerf}, None, "Sobol"
    )


@pytest.mark.slow  # three BoTorch generations
def test_sobol_then_botorch_within_the_space(tmp_path: Path, space: SearchSpace, monkeypatch) -> None:
    from botorch.acquisition.multi_objective import logei

    extensions = tmp_path / "torch_extensions"  # where BoTorch would compile its fused C++ kernel
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    monkeypatch.setattr(logei, "_load_attempted", False)  # as in a fresh process
    monkeypatch.setattr(logei, "_C", None)
    study = Study.open(tmp_path, space, seed=space.seed)
    import torch

    torch.set_num_threads(2)  # conftest.py runs this test single-threaded: give generation a setting to restore
    threads = torch.get_num_threads()
    for number in range(8):  # 5 Sobol + 3 BoTorch (~2 CPU-s each; tests/benchmarks/generation.py)
        if number == 6:  # the BoTorch step resumes from the snapshot: the custom strategy round-trips
            study = Study.open(tmp_path, space, seed=space.seed)
        index, parameters = study.next_trial()
        assert parameters["lambda1"] + parameters["lambda2"] <= 1 + 1e-9
        assert 0 <= parameters["lambda1"] <= 1 and 0 <= parameters["lambda2"] <= 1
        assert parameters["lambda_area"] in {0.5, 1.0, 2.0} and isinstance(parameters["lambda_area"], float)
        assert space.contains(parameters)
        assert study.complete(index, synthetic(parameters))
    assert torch.get_num_threads() == threads  # generation runs single-threaded, then restores the setting
    assert logei._C is None and not extensions.exists()  # no compiler ran (ax_seam.no_botorch_kernel_compile)
    records = study.records()
    assert [r.generator for r in records] == ["Sobol"] * 5 + ["BoTorch"] * 3
    assert [r.index for r in records] == list(range(8)) and study.finished_count == 8
    (mbm,) = study.client._generation_strategy.nodes_by_name["MBM"].generator_specs
    assert mbm.generator_gen_kwargs["model_gen_options"]["optimizer_kwargs"]["num_restarts"] == 5
    assert records[0].metrics["loss"] == 1.0  # extra metrics are kept, outside Ax's model
    # No standard error reaches Ax, so its model infers the noise (the decision in docs/search.md)
    assert ax_seam.experiment(study.client).lookup_data().df["sem"].isna().all()
    assert "loss" not in study.client.summarize().columns
    assert records[0].lambda3 == pytest.approx(1 - records[0].parameters["lambda1"] - records[0].parameters["lambda2"])
    front = study.pareto()
    assert front and all(r.status == TrialState.COMPLETED for r in front)
    choice = study.select()  # the paper space's rule: the model's prediction
    assert choice.rule == "predicted" and choice.predicted is not None and choice.record.status == TrialState.COMPLETED
    observed = choose(records, SIGNS, "observed", {})
    assert observed.record == max(front, key=lambda r: trade_off(r, SIGNS))


def test_same_seed_same_sobol_points_and_seed_override(tmp_path: Path, space: SearchSpace) -> None:
    first = Study.open(tmp_path / "a", space, seed=1).next_trial()
    again = Study.open(tmp_path / "b", space, seed=1).next_trial()
    other = Study.open(tmp_path / "c", space, seed=2).next_trial()
    assert first == again and first != other


@pytest.mark.slow  # two studies into the BoTorch phase
def test_botorch_trials_are_reproducible(tmp_path: Path, space: SearchSpace) -> None:
    runs = []
    for name in ("a", "b"):
        study = Study.open(tmp_path / name, space, seed=11)
        for _ in range(6):
            index, parameters = study.next_trial()
            study.complete(index, synthetic(parameters))
        runs.append([(r.generator, r.parameters) for r in study.records()])
    assert runs[0] == runs[1] and runs[0][-1][0] == "BoTorch"


def test_resume_after_kill(tmp_path: Path, space: SearchSpace) -> None:
    study = Study.open(tmp_path, space, seed=3)
    for _ in range(2):
        index, parameters = study.next_trial()
        study.complete(index, synthetic(parameters))
    running, _ = study.next_trial()
    del study  # the process dies with trial 2 running; the snapshot on disk is all that is left
    assert not list(tmp_path.glob("*.tmp"))
    saved = json.loads((tmp_path / SNAPSHOT_NAME).read_text())
    assert len(saved["experiment"]["trials"]) == 3

    resumed = Study.open(tmp_path, space, seed=3)
    records = resumed.records()
    assert [r.index for r in records] == [0, 1, 2]
    assert [r.status for r in records] == [TrialState.COMPLETED, TrialState.COMPLETED, TrialState.FAILED]
    assert records[running].reason == INTERRUPTED
    assert resumed.finished_count == 2 and sum(r.status == TrialState.FAILED for r in resumed.records()) == 1
    index, _ = resumed.next_trial()
    assert index == 3

    reloaded = Study.open(tmp_path, space, seed=3)  # trial 3 was running again: interrupted too
    assert [(r.index, r.status, r.reason) for r in reloaded.records()] == [
        (0, TrialState.COMPLETED, None),
        (1, TrialState.COMPLETED, None),
        (2, TrialState.FAILED, INTERRUPTED),
        (3, TrialState.FAILED, INTERRUPTED),
    ]
    assert reloaded.next_trial()[0] == 4


def test_fail_keeps_reason_and_search_goes_on(tmp_path: Path, space: SearchSpace) -> None:
    study = Study.open(tmp_path, space, seed=4)
    index, _ = study.next_trial()
    study.fail(index, "loss diverged at step 12")
    nan_index, parameters = study.next_trial()
    assert not study.complete(nan_index, {**synthetic(parameters), "road_morf_auc": float("nan")})
    next_index, parameters = study.next_trial()
    assert study.complete(next_index, synthetic(parameters))

    records = Study.open(tmp_path, space, seed=4).records()
    assert records[index].status == TrialState.FAILED and records[index].reason == "loss diverged at step 12"
    assert records[nan_index].reason == "non-finite objective: road_morf_auc = nan"
    assert records[next_index].status == TrialState.COMPLETED and records[next_index].metrics["loss"] == 1.0
    table = format_table(records, {next_index}, space.objective_names)
    assert "failed: loss diverged at step 12" in table
    lines = table.splitlines()
    assert lines[0].split() == [
        "trial",
        "generator",
        "lambda1",
        "lambda2",
        "lambda_area",
        "lambda3",
        "MoRF",
        "LeRF",
        "status",
    ]
    assert lines[2 + next_index].startswith("*")
    column = lines[0].index("status")
    assert lines[2 + index].index(TrialState.FAILED) == lines[2 + next_index].index(TrialState.COMPLETED) == column
    with pytest.raises(ValueError, match="road_lerf_auc"):
        study.complete(study.next_trial()[0], {"road_morf_auc": 0.1})


def test_pareto_and_select_on_hand_made_data() -> None:
    records = [
        record(0, morf=0.30, lerf=0.60),  # dominated by 1
        record(1, morf=0.20, lerf=0.70),  # Pareto, LeRF − MoRF = 0.50
        record(2, morf=0.10, lerf=0.40),  # Pareto, 0.30
        record(3, morf=0.40, lerf=0.95),  # Pareto, 0.55  <- best trade-off
        record(4, morf=0.01, lerf=0.99, status=TrialState.FAILED),  # would dominate all, but failed
    ]
    front = pareto_front(records, SIGNS)
    assert [r.index for r in front] == [1, 2, 3]
    assert max(front, key=lambda r: trade_off(r, SIGNS)).index == 3
    reversed_directions = pareto_front(records, {"road_morf_auc": 1.0, "road_lerf_auc": -1.0})
    assert [r.index for r in reversed_directions] == [0, 2, 3]


def test_select_through_the_study(tmp_path: Path, space: SearchSpace) -> None:
    study = Study.open(tmp_path, dataclasses.replace(space, choice="observed"), seed=5)
    with pytest.raises(UserError, match="no trial has completed"):
        study.select()
    hand_made = [(0.30, 0.60), (0.20, 0.70), None, (0.10, 0.40), (0.40, 0.95)]
    for values in hand_made:
        index, _ = study.next_trial()
        if values is None:
            study.fail(index, "out of memory")
        else:
            study.complete(index, {"road_morf_auc": values[0], "road_lerf_auc": values[1]})
    assert [r.index for r in study.pareto()] == [1, 3, 4]
    assert study.select().record.index == 4
    assert study.select(trial=0).record.index == 0 and study.select(trial=0).rule == "selected"
    with pytest.raises(UserError, match=r"--select 2: that trial is failed \(out of memory\).*\[0, 1, 3, 4\]"):
        study.select(trial=2)
    with pytest.raises(UserError, match="--select 9: no such trial"):
        study.select(trial=9)


@pytest.mark.slow  # fits Ax's model
def test_the_predicted_rule_passes_over_a_lucky_noisy_trial_that_the_observed_rule_takes(
    tmp_path: Path, space: SearchSpace
) -> None:
    # A poor point observed three times, once with a lucky draw that makes it look best of all; a good region whose
    # trials agree with each other; a few points elsewhere.
    poor, lucky = (0.7, 0.1), (0.20, 0.68)
    trials = [
        ((0.2, 0.7), (0.250, 0.650)),
        ((0.22, 0.68), (0.255, 0.645)),
        ((0.18, 0.72), (0.245, 0.655)),
        ((0.5, 0.3), (0.300, 0.600)),
        ((0.05, 0.9), (0.280, 0.620)),
        ((0.9, 0.05), (0.400, 0.500)),
        (poor, (0.360, 0.540)),
        (poor, (0.340, 0.560)),
        (poor, lucky),
    ]
    study = Study.open(tmp_path, dataclasses.replace(space, choice="predicted"), seed=0)
    for (lambda1, lambda2), (morf, lerf) in trials:
        index = study.client.attach_trial({"lambda1": lambda1, "lambda2": lambda2, "lambda_area": 1.0})
        study.complete(index, {"road_morf_auc": morf, "road_lerf_auc": lerf})
    records = study.records()
    observed = choose(records, SIGNS, "observed", {})
    assert observed.record.index == 8 and observed.observed == pytest.approx(0.48)  # the lucky draw
    predicted = study.select()
    assert predicted.rule == "predicted" and predicted.record.index in (0, 1, 2)  # the good region
    assert predicted.predicted < predicted.observed + 0.05 and predicted.observed == pytest.approx(0.40, abs=0.011)
    assert predicted.to_json()["rule"] == "predicted" and "model-predicted" in predicted.describe()


def test_resume_with_another_space_is_refused(tmp_path: Path, space: SearchSpace) -> None:
    Study.open(tmp_path, space, seed=6)
    lambda1, *rest = space.parameters
    narrower = dataclasses.replace(space, parameters=(dataclasses.replace(lambda1, bounds=(0.0, 0.5)), *rest))
    with pytest.raises(UserError, match=r"different search space.*range=\[0.0, 0.5\].*new --name") as error:
        Study.open(tmp_path, narrower, seed=6)
    assert "lambda2" not in str(error.value)
    flipped = dataclasses.replace(space, objectives={"road_morf_auc": "maximize", "road_lerf_auc": "maximize"})
    with pytest.raises(UserError, match="objectives"):
        Study.open(tmp_path, flipped, seed=6)


def test_unreadable_snapshot(tmp_path: Path, space: SearchSpace) -> None:
    (tmp_path / SNAPSHOT_NAME).write_text("{")
    with pytest.raises(UserError, match="not a readable Ax snapshot"):
        Study.open(tmp_path, space, seed=7)


def test_another_space_with_log_scale_learning_rate(tmp_path: Path) -> None:
    path = tmp_path / "lr.yaml"
    path.write_text(
        "parameters:\n"
        "  lambda1: {key: loss.lambda1, type: range, bounds: [0.0, 1.0]}\n"
        "  lambda2: {key: loss.lambda2, type: range, bounds: [0.0, 1.0]}\n"
        "  max_lr: {key: train.max_lr, type: range, bounds: [1.0e-5, 1.0e-3], scale: log}\n"
        "  batch_size: {key: train.batch_size, type: choice, values: [32, 64]}\n"
        "constraints: ['lambda1 + lambda2 <= 0.9', 'lambda1 >= 0.6']\n"
        "objectives: {road_morf_auc: minimize}\n"
    )
    space = load_search_space(path)
    study = Study.open(tmp_path / "study", space, seed=8)
    for _ in range(3):
        _, parameters = study.next_trial()
        assert space.contains(parameters) and parameters["lambda1"] >= 0.6 - 1e-9
        config = trial_config({}, space, parameters)
        assert (config.loss.lambda1, config.loss.lambda2) == (parameters["lambda1"], parameters["lambda2"])
        assert (config.train.max_lr, config.train.batch_size) == (parameters["max_lr"], parameters["batch_size"])


def test_reference_maps_set_the_thresholds_and_sit_under_the_trial_table(tmp_path: Path, space: SearchSpace) -> None:
    references = {
        "random maps": {"road_morf_auc": 0.74, "road_lerf_auc": 0.73},
        "centred blob": {"road_morf_auc": 0.38, "road_lerf_auc": 0.61},
    }
    thresholds = objective_thresholds(references, space.objective_signs)
    assert thresholds == {"road_morf_auc": 0.74, "road_lerf_auc": 0.61}  # the worst trivial value of each
    study = Study.open(tmp_path, space, seed=0, thresholds=thresholds)
    index, parameters = study.next_trial()
    study.complete(index, synthetic(parameters))
    assert Study.open(tmp_path, space, seed=0, thresholds=thresholds).thresholds == thresholds
    with pytest.raises(UserError, match="objective thresholds"):
        Study.open(tmp_path, space, seed=0, thresholds={"road_morf_auc": 0.5, "road_lerf_auc": 0.61})
    lines = study_table(study, references).splitlines()
    assert lines[-2].split()[:4] == ["-", "random", "maps", "-"] and "threshold for MoRF" in lines[-2]
    assert "centred blob" in lines[-1] and "threshold for LeRF" in lines[-1] and "0.6100" in lines[-1]
    assert set(lines[-3]) == {"-", " "}  # a rule between the trials and the references


def test_small_values_such_as_a_learning_rate_are_not_shown_as_zero():
    from pipeline.hpo.outputs.trial_table import _format_cell

    assert [_format_cell(value) for value in (1e-5, 4.467e-06, 5.5e-17, 0.29834, -0.0)] == [
        "1e-05",
        "4.47e-06",
        "0.0000",
        "0.2983",
        "0.0000",
    ]
