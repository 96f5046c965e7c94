"""The chosen configuration of a finished or running search as an experiment YAML (read only: safe while the
search runs)."""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline import config as configs
from pipeline.errors import UserError
from pipeline.hpo import ax_seam
from pipeline.hpo.folder import BASE_CONFIG, REFERENCES, SPACE, STATE, SearchState
from pipeline.hpo.space import load_search_space
from pipeline.hpo.study import Study
from pipeline.hpo.trial_configs import trial_config
from pipeline.hpo.trial_table import study_table
from pipeline.metrics.road import road_protocol_of


def export(directory: Path, out: Path | None = None, trial: int | None = None) -> Path:
    """Write the chosen trial's full config (and the final head's weights when they belong to it)."""
    if not (directory / BASE_CONFIG).is_file():
        raise UserError(f"{directory} holds no search; pass the --name (and --root) the search was run with")
    space = load_search_space(directory / SPACE)
    ax_seam.quiet_ax()
    study = Study.read(directory, space)
    chosen = study.select(trial)
    config = trial_config(configs.read_yaml(directory / BASE_CONFIG), space, chosen.parameters)
    out = out or directory / "export" / "best.yaml"
    configs.dump(config, out)
    state = SearchState.load(directory / STATE)
    print(study_table(study, state.values.get(REFERENCES)))
    aucs = ", ".join(f"{k}={v:.4g}" for k, v in chosen.metrics.items() if k.startswith("road_") and k.endswith("auc"))
    print(f"trial {chosen.index} (ROAD: {road_protocol_of(config.evaluation)}): {aucs}")
    head = directory / "final" / "head.pt"
    if state.values.get("final_trial") == chosen.index and head.is_file():
        shutil.copyfile(head, out.with_name("head.pt"))
        print(f"wrote {out} and {out.with_name('head.pt')} (the final head trained with this config)")
    else:
        print(f"wrote {out}; train its head with: python -m pipeline.train --config {out}")
    return out
