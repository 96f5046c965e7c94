"""The early-stopping rule on synthetic checkpoint scores, its replay, and a stopped trial in the Ax study."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import config as configs
from pipeline.hpo.early_stopping import StoppingRule, replay, stopping_rule
from pipeline.hpo.space import load_search_space
from pipeline.hpo.study import Study, TrialRecord
from pipeline.resources import DEFAULT_SEARCH_SPACE

SIGNS = {"road_morf_auc": -1.0, "road_lerf_auc": 1.0}
NOISE = 0.02


def scores(morf: float, lerf: float, noise: float = NOISE) -> dict[str, float]:
    return {"road_morf_auc": morf, "road_morf_auc_se": noise, "road_lerf_auc": lerf, "road_lerf_auc_se": noise}


def trial(index: int, final: tuple[float, float], at_50: tuple[float, float], generator: str = "BoTorch",
          status: str = "completed") -> TrialRecord:
    return TrialRecord(index, status, {"lambda1": 0.1}, scores(*final), None, generator, {50: scores(*at_50)})


RIVALS = (trial(0, (0.30, 0.65), (0.34, 0.62), "Sobol"), trial(1, (0.32, 0.64), (0.35, 0.61), "Sobol"),
          trial(2, (0.45, 0.70), (0.46, 0.68), "Sobol"))


def test_a_trial_beaten_by_enough_completed_trials_by_more_than_the_noise_stops():
    rule = StoppingRule(SIGNS, 2, RIVALS)
    reason = rule.reason(50, scores(0.47, 0.55))  # trial 2's MoRF at 50 % is better by less than the noise
    assert reason.startswith("at 50 % of training, 2 completed trials (0, 1) scored better on road_morf_auc and "
                             "road_lerf_auc by more than the noise")


@pytest.mark.parametrize("at_50, why", [
    ((0.37, 0.58), "only trial 0 beats it: trial 1's MoRF is better by 0.02, within the noise hypot(0.02, 0.02)"),
    ((0.33, 0.30), "no rival's MoRF at 50 % is better"),
])
def test_a_trial_within_the_noise_or_beaten_by_too_few_goes_on(at_50, why):
    assert StoppingRule(SIGNS, 2, RIVALS).reason(50, scores(*at_50)) is None, why


def test_a_trial_on_the_front_of_final_scores_goes_on_even_when_checkpoints_beat_it():
    rivals = (trial(0, (0.50, 0.50), (0.20, 0.80)), trial(1, (0.50, 0.50), (0.21, 0.79)))
    rule = StoppingRule(SIGNS, 2, rivals)
    assert rule.reason(50, scores(0.40, 0.60)) is None  # no final score dominates (0.40, 0.60): it is on the front
    assert rule.reason(50, scores(0.60, 0.40)) is not None


def test_no_rule_for_sobol_trials_or_without_early_stop_and_rivals_are_the_completed_trials():
    records = [*RIVALS, trial(3, (0.5, 0.5), (0.5, 0.5), status="running"), trial(4, (0, 0), (0, 0), "Sobol",
                                                                                   status="running")]
    on = configs.CheckpointConfig(early_stop=True, dominating=3)
    rule = stopping_rule(records, 3, SIGNS, on)
    assert [rival.index for rival in rule.rivals] == [0, 1, 2] and rule.dominating == 3
    assert stopping_rule(records, 4, SIGNS, on) is None
    assert stopping_rule(records, 3, SIGNS, configs.CheckpointConfig()) is None


def test_replay_stops_in_index_order_against_the_trials_it_kept():
    records = [*RIVALS, trial(3, (0.70, 0.20), (0.60, 0.30)), trial(4, (0.31, 0.64), (0.35, 0.61)),
               trial(5, (0.75, 0.25), (0.62, 0.31))]
    assert replay(records, SIGNS, 2) == {3: 50, 5: 50}
    assert replay(records, SIGNS, 4) == {5: 50}  # trial 4 completes and is the fourth rival for trial 5


def test_checkpoint_percentages_must_increase_and_early_stop_needs_checkpoints():
    with pytest.raises(configs.UserError, match=r"checkpoints.at = \[75, 50\]: give distinct percentages"):
        configs.from_dict({"checkpoints": {"at": [75, 50]}})
    with pytest.raises(configs.UserError, match="needs checkpoints to stop at"):
        configs.from_dict({"checkpoints": {"at": [], "early_stop": True}})
    with pytest.raises(configs.UserError, match="checkpoints.at"):
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
        assert (stopped.status, stopped.reason) == ("early_stopped", "beaten at 50 %")
        assert stopped.metrics["road_morf_auc"] == pytest.approx(0.6) and stopped.checkpoints == {50: scores(0.6, 0.3)}
        assert done.checkpoints == {50: scores(0.35, 0.55)} and done.metrics["train_seconds"] == 2.0
        assert reopened.finished_count == 2 and [r.index for r in reopened.pareto()] == [first]
    data = study.client._experiment.lookup_data().df
    assert set(data[data.trial_index == second].step) == {50.0}
