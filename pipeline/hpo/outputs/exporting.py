"""The chosen configuration of a finished or running search as an experiment YAML (read only: safe while the
search runs)."""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline import config as configs
from pipeline.hpo.ax_study import ax_seam
from pipeline.hpo.ax_study.study import Study
from pipeline.hpo.outputs.folder import FINAL_TRIAL, REFERENCES, SearchFolder
from pipeline.hpo.outputs.trial_table import study_table
from pipeline.hpo.trials.trial_configs import trial_config
from pipeline.metrics.road import road_protocol_of


def export(folder: SearchFolder, out: Path | None = None, trial: int | None = None) -> Path:
    """Write the chosen trial's full config (and the final head's weights when they belong to it)."""
    space = folder.space()
    ax_seam.quiet_ax()
    study = Study.read(folder.directory, space)
    choice = study.select(trial)
    chosen = choice.record
    config = trial_config(folder.base(), space, chosen.parameters)
    out = out or folder.directory / "export" / "best.yaml"
    configs.dump(config, out, header=f"chosen by {choice.describe()}")
    print(study_table(study, folder.state.get(REFERENCES)))
    aucs = ", ".join(f"{k}={v:.4g}" for k, v in chosen.metrics.items() if k.startswith("road_") and k.endswith("auc"))
    print(f"trial {chosen.index} (ROAD: {road_protocol_of(config.evaluation)}): {aucs}; {choice.describe()}")
    head = folder.final / "head.pt"
    if folder.state.get(FINAL_TRIAL) == chosen.index and head.is_file():
        shutil.copyfile(head, out.with_name("head.pt"))
        print(f"wrote {out} and {out.with_name('head.pt')} (the final head trained with this config)")
    else:
        print(f"wrote {out}; train its head with: python -m pipeline.train --config {out}")
    return out
