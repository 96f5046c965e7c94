"""What a benchmark does with its result: print it, and with ``--out`` write it as Markdown for the docs."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def publish(text: str, out: Path | None) -> None:
    """Print ``text``; with ``out``, also write it there (folders made as needed) for `benchmarks/results/`."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def described_commit(checkout: Path = REPO) -> str:
    """``git describe --always --dirty`` of ``checkout``: the commit a result was measured at."""
    return subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=checkout, capture_output=True, text=True
    ).stdout.strip()
