"""What a user sees: a short real demo search (into the BoTorch phase) writes nothing to stderr when its output
is a log file, and its trial table ends with the reference maps that set the objective thresholds; torch's CUDA
toolkit notice stays off the console."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.system
@pytest.mark.slow
def test_a_demo_search_writes_no_warning_or_progress_noise_to_a_log(demo_search):
    """The session's demo search command (conftest.py): 3 trials, BoTorch from the third, logged to a tracking
    server, stdout and stderr to files, Python's warnings shown. (A new SQLite store's own noise is checked by
    test_tracking's two processes that create one.)"""
    result = demo_search.result
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert sum("[BoTorch]" in line for line in lines) == 1 and sum("-> MoRF" in line for line in lines) == 3
    random_row = next(line for line in lines if "random maps" in line)
    centre_row = next(line for line in lines if "centred blob" in line)
    assert "objective threshold" in random_row + centre_row
    assert lines.index(centre_row) == lines.index(random_row) + 1
    assert any(line.startswith("objective thresholds from trivial maps") for line in lines)
    assert "registered as models:/ptame-efficientnet_lite0-efficientnet_lite1/1 and models:/" in lines[-2]
    assert lines[-1].startswith(f"MLflow: {demo_search.tracking_uri}/#/experiments/")
    assert lines[-1].endswith("?workflowType=machine_learning")


@pytest.mark.system
def test_torchs_cuda_toolkit_notice_stays_off_the_console(tmp_path):
    """BoTorch imports torch's C++ compiler helper, which warns when a CUDA toolkit is installed but no GPU runs."""
    importer = "import torch.utils.cpp_extension"
    env = os.environ | {"PYTHONPATH": str(REPO), "CUDA_HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    plain = subprocess.run([sys.executable, "-c", importer], env=env, capture_output=True, text=True)
    assert "No CUDA runtime is found" in plain.stderr  # the notice exists, so the check below can fail
    quiet = subprocess.run(
        [sys.executable, "-c", f"from pipeline import quiet; quiet.quiet_libraries(); {importer}"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert quiet.returncode == 0 and quiet.stderr == ""
