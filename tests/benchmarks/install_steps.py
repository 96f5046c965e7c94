"""Two steps of install.sh against what they replaced, alternated in one run: the venv with its pip, and the bytecode.

    python tests/benchmarks/install_steps.py [--repeats 3] [--out FILE.md]

The venv: ``python3 -m venv`` (ensurepip) and ``pip install --upgrade pip`` in it, against ``--without-pip`` and the
interpreter's own pip installing pip into it (``pip --python``). The bytecode: ``python -m compileall -j 0`` (test
suites skipped, as install.sh did) against ``compile_bytecode.py``, both over this checkout's
``.venv/lib/python3*/site-packages`` (run ./install.sh first) and writing into an empty ``PYTHONPYCACHEPREFIX``
folder, so that each compiles every module. Prints each side's median wall seconds and their ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

from tests.benchmarks.reporting import described_commit, publish  # noqa: E402


def timed(script: str, scratch: Path) -> float:
    """Wall seconds of a bash ``script`` run in ``scratch`` (an emptied folder); fails loudly."""
    for entry in scratch.iterdir():
        subprocess.run(["rm", "-rf", str(entry)], check=True)
    started = time.perf_counter()
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=scratch, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the result as Markdown here")
    args = parser.parse_args()
    [site] = (REPO / ".venv" / "lib").glob("python3*/site-packages")
    python = REPO / ".venv" / "bin" / "python"
    cache = "PYTHONPYCACHEPREFIX=pycache"
    steps = {
        "venv and pip": {
            "ensurepip, then pip upgrades itself (before)": (
                "python3 -m venv v && v/bin/python -m pip install -q -U pip"
            ),
            "--without-pip, the interpreter's pip installs pip (install.sh)": (
                "python3 -m venv --without-pip v && python3 -m pip --python v/bin/python install -q -U pip"
            ),
        },
        "bytecode of .venv's site-packages": {
            "compileall -j 0 (before)": f"{cache} {python} -m compileall -qq -j 0 -x '/tests?/' {site} || true",
            "compile_bytecode.py (install.sh)": f"{cache} {python} {REPO / 'compile_bytecode.py'} {site}",
        },
    }
    seconds: dict[str, list[float]] = {side: [] for sides in steps.values() for side in sides}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for sides in steps.values():
                for side, script in sides.items():
                    seconds[side].append(timed(script, Path(folder)))
    lines = [
        f"Measured {date.today()} at commit {described_commit()} on {platform.node()} ({platform.machine()}, "
        f"{os.cpu_count()} CPUs): `python tests/benchmarks/install_steps.py"
        + (f" --out {args.out}`" if args.out else "`"),
        "",
        f"Wall seconds, {args.repeats} alternated runs per side (median, then each run):",
        "",
        "| step | side | median s | runs |",
        "|---|---|---:|---|",
    ]
    for step, sides in steps.items():
        for side in sides:
            runs = ", ".join(f"{value:.1f}" for value in seconds[side])
            lines.append(f"| {step} | {side} | {statistics.median(seconds[side]):.1f} | {runs} |")
    lines.append("")
    for step, (before, after) in steps.items():
        ratio = statistics.median(seconds[before]) / statistics.median(seconds[after])
        lines.append(f"{step}: before / install.sh = {ratio:.2f}.")
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
