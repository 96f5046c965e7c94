"""A search folder written by this code (``tests/fixtures/search_folder``, see its ``write_search_folder.py``) still
opens, reads and resumes through the Ax seam: an Ax or MLflow upgrade that breaks resuming fails here."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from pipeline import config as configs
from pipeline.hpo.ax_study.study import INTERRUPTED, Study
from pipeline.hpo.outputs.exporting import export
from pipeline.hpo.outputs.folder import PARENT_RUN, REFERENCES, SearchFolder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EXPECTED = json.loads((FIXTURES / "search_folder_records.json").read_text())


@pytest.fixture
def folder(tmp_path: Path) -> SearchFolder:
    """A copy of the fixture, so resuming may change it."""
    return SearchFolder(shutil.copytree(FIXTURES / "search_folder", tmp_path / "fixture"))


def test_the_saved_search_reads_back_as_written(folder: SearchFolder) -> None:
    study = Study.read(folder.directory, folder.space())
    assert [asdict(record) for record in study.records()] == EXPECTED
    assert [record["status"] for record in EXPECTED] == ["completed"] * 2 + ["failed"] + ["completed"] * 3 + ["running"]
    assert study.thresholds == {"road_morf_auc": 0.42, "road_lerf_auc": 0.45}
    assert folder.state[PARENT_RUN] == "0123456789abcdef" and set(folder.state[REFERENCES]) == {
        "random maps",
        "centred blob",
    }


@pytest.mark.slow  # a BoTorch generation
def test_resuming_marks_the_running_trial_interrupted_and_goes_on_with_botorch(folder: SearchFolder) -> None:
    thresholds = Study.read(folder.directory, folder.space()).thresholds
    study = Study.open(folder.directory, folder.space(), seed=7, thresholds=thresholds)
    killed = study.records()[6]
    assert (killed.status, killed.reason) == ("failed", INTERRUPTED)
    index, parameters = study.next_trial()
    assert index == 7 and study.records()[7].generator == "BoTorch"
    assert study.space.contains(parameters)
    study.complete(index, {"road_morf_auc": 0.3, "road_lerf_auc": 0.6})
    reopened = Study.read(folder.directory, folder.space())
    assert reopened.finished_count == 6 and reopened.records()[7].metrics["road_lerf_auc"] == pytest.approx(0.6)


def test_export_reads_the_saved_search(folder: SearchFolder, capsys: pytest.CaptureFixture[str]) -> None:
    best = export(folder)
    config = configs.load(best)
    chosen = Study.read(folder.directory, folder.space()).select().record
    assert (config.loss.lambda1, config.loss.lambda2) == pytest.approx(
        (chosen.parameters["lambda1"], chosen.parameters["lambda2"])
    )
    assert "random maps" in capsys.readouterr().out  # the reference rows under the trial table
