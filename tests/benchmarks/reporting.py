"""What a benchmark does with its result: print it, and with ``--out`` write it as Markdown for the docs."""

from __future__ import annotations

from pathlib import Path


def publish(text: str, out: Path | None) -> None:
    """Print ``text``; with ``out``, also write it there (folders made as needed) for `benchmarks/results/`."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
