"""Export the best configuration of a finished or interrupted search: ``python -m pipeline.export --name NAME``.

Writes a complete experiment YAML that ``python -m pipeline.train --config FILE`` reproduces. Reading the
search never changes it, so exporting while a search still runs is safe.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Sequence

from pipeline import cli, config as configs
from pipeline.errors import UserError
from pipeline.metrics.road import road_protocol_of
from pipeline.search import BASE_CONFIG, REFERENCES, SPACE, STATE, SearchState, trial_config
from pipeline.search_space import load_search_space
from pipeline.study import Study


def export(directory: Path, out: Path | None = None, trial: int | None = None) -> Path:
    """Write the chosen trial's full config (and the final head's weights when they belong to it)."""
    if not (directory / BASE_CONFIG).is_file():
        raise UserError(f"{directory} holds no search; pass the --name (and --root) the search was run with")
    space = load_search_space(directory / SPACE)
    cli.quiet_ax()
    study = Study.read(directory, space)
    chosen = study.select(trial)
    config = trial_config(configs.read_yaml(directory / BASE_CONFIG), space, chosen.parameters)
    out = out or directory / "export" / "best.yaml"
    configs.dump(config, out)
    state = SearchState.load(directory / STATE)
    print(study.table(state.values.get(REFERENCES)))
    aucs = ", ".join(f"{k}={v:.4g}" for k, v in chosen.metrics.items() if k.startswith("road_") and k.endswith("auc"))
    print(f"trial {chosen.index} (ROAD: {road_protocol_of(config.evaluation)}): {aucs}")
    head = directory / "final" / "head.pt"
    if state.values.get("final_trial") == chosen.index and head.is_file():
        shutil.copyfile(head, out.with_name("head.pt"))
        print(f"wrote {out} and {out.with_name('head.pt')} (the final head trained with this config)")
    else:
        print(f"wrote {out}; train its head with: python -m pipeline.train --config {out}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.export", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the search's name")
    parser.add_argument("--root", type=Path, default=Path("runs/search"), help="folder holding searches")
    parser.add_argument("--out", type=Path, help="output YAML (default: <search>/export/best.yaml)")
    parser.add_argument("--select", type=int, metavar="TRIAL", help="export this trial instead of the best")
    args = parser.parse_args(argv)
    export(args.root / args.name, args.out, args.select)
    return 0


if __name__ == "__main__":
    cli.run(main)
