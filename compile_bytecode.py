"""Compile a site-packages folder's modules to bytecode on every core: ``python compile_bytecode.py SITE_PACKAGES``.

Run by install.sh after pip, which only unpacks (``--no-compile``). ``python -m compileall -j 0`` hands its workers one
file at a time and spends much of its time passing files between processes; here each worker takes a whole
package, the largest first. Skips the packages' own test suites (nothing here imports them) and, like pip, the few
files written for other Python versions.
"""

from __future__ import annotations

import compileall
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

TEST_SUITES = re.compile(r"/tests?/")


def source_bytes(entry: Path) -> int:
    if entry.is_dir():
        return sum(path.stat().st_size for path in entry.rglob("*.py"))
    return entry.stat().st_size if entry.suffix == ".py" else 0


def compile_entry(entry: str) -> None:
    if os.path.isdir(entry):
        compileall.compile_dir(entry, quiet=2, rx=TEST_SUITES, workers=1)
    elif entry.endswith(".py"):
        compileall.compile_file(entry, quiet=2)


def main(site_packages: Path) -> None:
    entries = sorted(site_packages.iterdir(), key=source_bytes, reverse=True)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(compile_entry, map(str, entries)))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
