"""BoTorch's fused qLogEHVI C++ kernel against its PyTorch path, side by side in one run.

    python tests/benchmarks/botorch_kernel.py [--botorch 15] [--repeats 3] [--out FILE.md]

Runs `generation.py` (the project's Sobol + BoTorch study on a synthetic two-objective function) in fresh
processes: first once with ``--botorch-kernel`` and an empty ``TORCH_EXTENSIONS_DIR`` (BoTorch compiles the kernel,
as on a new machine or environment), then ``--repeats`` times each way, alternated, the kernel side reusing that
compiled kernel. Prints the BoTorch generations' mean wall and CPU seconds, each process's CPU seconds (its
children's, e.g. the compiler, included), and whether both sides generated the same points.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

from tests.benchmarks.reporting import described_commit, publish

GENERATIONS = re.compile(r"^BoTorch: \d+ generations, wall mean ([\d.]+) s .*cpu mean ([\d.]+) s")
TRIAL_ROW = re.compile(r"^\s*(\d+)\s+(Sobol|BoTorch)\s+[\d.]+\s+[\d.]+\s+(.*)$")
HYPERVOLUME = re.compile(r"after all ([\d.]+)$")
RUN_KEYS = ("generation_wall", "generation_cpu", "process_cpu", "wall", "hypervolume")  # the table's columns


def generation_run(botorch: int, kernel: bool, extensions: Path) -> dict:
    """One `generation.py` process: its BoTorch means, its CPU seconds with its children's, wall, points."""
    command = [sys.executable, str(REPO / "tests" / "benchmarks" / "generation.py"), "--botorch", str(botorch)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        command + ["--botorch-kernel"] * kernel,
        env=os.environ | {"TORCH_EXTENSIONS_DIR": str(extensions)},
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = done.stdout.splitlines()
    [(generation_wall, generation_cpu)] = [m.groups() for line in lines if (m := GENERATIONS.match(line))]
    assert f"fused C++ kernel loaded: {kernel}" in lines, done.stdout  # each side ran the path it names
    return {
        "generation_wall": float(generation_wall),
        "generation_cpu": float(generation_cpu),
        "process_cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "wall": wall,
        "points": [m.group(3) for line in lines if (m := TRIAL_ROW.match(line)) and m.group(2) == "BoTorch"],
        "hypervolume": float(next(m.group(1) for line in lines if (m := HYPERVOLUME.search(line)))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--botorch", type=int, default=15, help="BoTorch trials after the Sobol ones")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the result as Markdown here")
    args = parser.parse_args()
    sides = {"PyTorch path (project)": False, "fused C++ kernel": True}
    runs: dict[str, list[dict]] = {label: [] for label in sides}
    with tempfile.TemporaryDirectory() as extensions:
        compiling = generation_run(args.botorch, True, Path(extensions))
        for _ in range(args.repeats):
            for label, kernel in sides.items():
                runs[label].append(generation_run(args.botorch, kernel, Path(extensions)))
    commit = described_commit()
    lines = [
        f"Measured {date.today()} at commit {commit} on {platform.node()} ({platform.machine()}, {os.cpu_count()} "
        f"CPUs): `python tests/benchmarks/botorch_kernel.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"5 Sobol + {args.botorch} BoTorch generations of `generation.py` per process; medians of {args.repeats} "
        "alternated processes per side (the kernel side reuses the kernel compiled by the first process):",
        "",
        "| side | BoTorch generation wall s (mean) | its CPU s (mean) | process CPU s | process wall s | hypervolume |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def row(label: str, results: list[dict]) -> str:
        medians = [statistics.median(r[key] for r in results) for key in RUN_KEYS]
        return f"| {label} | " + " | ".join(f"{value:.2f}" for value in medians[:4]) + f" | {medians[4]:.4f} |"

    for label, results in runs.items():
        lines.append(row(label, results))
    lines.append(row("fused C++ kernel, compiled in this process (once)", [compiling]))
    python, fused = (statistics.median(r["generation_wall"] for r in runs[label]) for label in sides)
    same = all(r["points"] == runs["fused C++ kernel"][0]["points"] for r in runs["PyTorch path (project)"])
    compile_cpu = compiling["process_cpu"] - statistics.median(r["process_cpu"] for r in runs["fused C++ kernel"])
    lines += [
        "",
        f"Generation wall, PyTorch path / fused kernel: {python / fused:.2f}. Compiling the kernel cost "
        f"{compile_cpu:.1f} CPU-s more than a run that reuses it. Same BoTorch points on both sides: "
        f"{'yes' if same else 'no'}.",
    ]
    if not same:
        first_python = runs["PyTorch path (project)"][0]["points"]
        first_fused = runs["fused C++ kernel"][0]["points"]
        index = next(i for i, (a, b) in enumerate(zip(first_python, first_fused)) if a != b)
        lines.append(
            f"First BoTorch point that differs (number {index + 1}): PyTorch path `{first_python[index]}`, "
            f"fused kernel `{first_fused[index]}`."
        )
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
