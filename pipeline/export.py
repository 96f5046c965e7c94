"""Export the best configuration of a finished or interrupted search: ``python -m pipeline.export --name NAME``.

Writes a complete experiment YAML that ``python -m pipeline.train --config FILE`` reproduces. Reading the
search never changes it, so exporting while a search still runs is safe.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pipeline import cli
from pipeline.hpo.outputs.exporting import export
from pipeline.hpo.outputs.folder import DEFAULT_ROOT, SearchFolder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.export", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the search's name")
    parser.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help=f"folder holding searches (default {DEFAULT_ROOT})"
    )
    parser.add_argument("--out", type=Path, help="output YAML (default: <search>/export/best.yaml)")
    parser.add_argument("--select", type=int, metavar="TRIAL", help="export this trial instead of the best")
    args = parser.parse_args(argv)
    export(SearchFolder.find(args.name, args.root), args.out, args.select)
    return 0


if __name__ == "__main__":
    cli.run(main)
