"""The README's two commands, exactly as written, in a fresh clone: wall time and peak RSS of each.

    python tests/benchmarks/fresh_clone.py [--commit HEAD] [--keep DIR] [--only N] [--out FILE.md]

Clones this repository at ``--commit`` into a temporary folder and runs the two commands of the README's first
code block there, one after the other, each through ``bash -c`` as a user would paste it; prints each command's
wall time, its peak RSS (the largest single process, from the kernel's accounting of the finished command and its
children) and its last output lines, and whether it succeeded. ``--keep DIR`` clones into DIR (which must not exist)
and keeps it, e.g. for `docs/make_figures.py` to read the demo search it ran; ``--only 2`` runs the test command
alone, install included.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

from tests.benchmarks.reporting import publish  # noqa: E402


def readme_commands(readme: str) -> list[str]:
    """The commands of the README's first ``bash`` block."""
    block = re.search(r"```bash\n(.*?)```", readme, re.DOTALL)
    if block is None:
        raise SystemExit("the README has no bash block")
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--keep", type=Path, help="clone into this new folder and keep it")
    parser.add_argument("--out", type=Path, help="also write the result as Markdown here")
    parser.add_argument("--only", type=int, metavar="N", help="run only the README's Nth command (1 or 2), alone")
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", args.commit], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        clone = args.keep.resolve() if args.keep else Path(scratch) / "clone"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        subprocess.run(["git", "checkout", "--quiet", commit], cwd=clone, check=True)
        commands = readme_commands((clone / "README.md").read_text())
        for command in [commands[args.only - 1]] if args.only else commands:
            print(f"$ {command}", flush=True)
            started = time.perf_counter()
            with open(Path(scratch) / "output.log", "w") as log:
                process = subprocess.Popen(
                    ["bash", "-c", command],
                    cwd=clone,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                )
                _, status, usage = os.wait4(process.pid, 0)
            wall = time.perf_counter() - started
            tail = (Path(scratch) / "output.log").read_text().strip().splitlines()[-3:]
            rows.append((command, wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), tail))
            print(
                f"  {minutes(wall)}, peak RSS {usage.ru_maxrss / 1024:.0f} MiB, exit "
                f"{os.waitstatus_to_exitcode(status)}",
                flush=True,
            )
    lines = [
        f"Measured {date.today()} at commit {commit} on {platform.node()} ({platform.machine()}, "
        f"{os.cpu_count()} CPUs, no GPU): `python tests/benchmarks/fresh_clone.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        "| command | wall | peak RSS | exit |",
        "|---|---:|---:|---:|",
    ]
    for command, wall, rss, code, _ in rows:
        lines.append(f"| `{command}` | {minutes(wall)} | {rss:,.0f} MiB | {code} |")
    for command, _, _, _, tail in rows:
        lines += ["", f"Last lines of `{command}`:", "", "```", *tail, "```"]
    text = "\n".join(lines)
    publish(text, args.out)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
