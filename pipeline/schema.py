"""The JSON Schema of experiment files: ``python -m pipeline.schema [--out FILE]``.

Prints the schema, or writes it to ``--out``. The package ships it as ``pipeline/experiments/
experiment.schema.json`` (regenerate with ``--out pipeline/experiments/experiment.schema.json``; a test fails
when it is stale), and each packaged experiment names it on a ``# yaml-language-server: $schema=...`` line, so
editors with a YAML language server complete and check keys, types, choices and bounds. Rules that tie keys
together (``loss.lambda1 + loss.lambda2 <= 1``, ``data.root`` for ImageNet, ...) are checked when a config loads.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from pipeline import cli
from pipeline.config import ExperimentConfig
from pipeline.errors import UserError
from pipeline.resources import EXPERIMENTS

SCHEMA_FILE = EXPERIMENTS / "experiment.schema.json"


def experiment_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of an experiment YAML file, from `ExperimentConfig`."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **TypeAdapter(ExperimentConfig).json_schema()}


def schema_text() -> str:
    return json.dumps(experiment_schema(), indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.schema", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help=f"write the schema here (the packaged one: {SCHEMA_FILE})")
    args = parser.parse_args(argv)
    if args.out is None:
        print(schema_text(), end="")
        return 0
    try:
        args.out.write_text(schema_text())
    except OSError as error:
        raise UserError(
            f"cannot write the schema to {str(args.out)!r}: {error.strerror}; pass --out to a writable "
            "file in an existing folder"
        ) from None
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
