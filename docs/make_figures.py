"""Remake the README's pictures from a finished demo search: the final head's maps beside Grad-CAM on the
validation photo (its class is trained; the test photos' are not), the search's trials with their Pareto front, and
(with Chromium) a screenshot of the search in MLflow.

    python docs/make_figures.py [--search runs/search/demo-efficientnet_lite0-efficientnet_lite1-ptame]
                                [--tracking-uri sqlite:///mlflow.db] [--mlflow-screenshot]

The maps come from the tool itself: ``python -m pipeline.compare --head SEARCH/final --split val --methods
gradcam,random --limit 4``, whose ``maps.png`` becomes ``docs/images/demo_maps.png`` and whose table, with the date,
commit and command, ``benchmarks/results/readme_comparison.md``; the same on the whole held-out test split gives
``benchmarks/results/demo_test_comparison.md``. The Pareto plot reads the search's Ax snapshot.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

IMAGES = REPO / "docs" / "images"
RESULTS = REPO / "benchmarks" / "results"
DEMO_SEARCH = Path("runs/search/demo-efficientnet_lite0-efficientnet_lite1-ptame")


def commit() -> str:
    return subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()


def comparison(search: Path, split: str, table: str, limit: int | None = None, image: str | None = None) -> None:
    """The final head beside Grad-CAM and random maps on ``split`` (its first ``limit`` views), by
    `pipeline.compare`: its table goes to ``benchmarks/results/TABLE``, its maps to ``docs/images/IMAGE``."""
    from pipeline import cli
    from pipeline.compare import main as compare_main

    with tempfile.TemporaryDirectory() as folder:
        argv = [
            "--head",
            str(search / "final"),
            "--split",
            split,
            "--methods",
            "gradcam,random",
            *(["--limit", str(limit)] if limit else []),
            "--out",
            folder,
        ]
        try:
            cli.run(compare_main, argv)
        except SystemExit as stop:
            if stop.code:
                raise
        if image:
            IMAGES.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(folder) / "maps.png", IMAGES / image)
        scores = (Path(folder) / "comparison.md").read_text()
    shown = " ".join(["--head", "SEARCH/final", *argv[2:-2]])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / table).write_text(
        f"Measured {date.today()} at commit {commit()} on {platform.node()} ({platform.machine()}): "
        f"`python -m pipeline.compare {shown}`, SEARCH the folder of "
        f"`python -m pipeline.search --experiment experiments/demo.yaml --trials 20`.\n\n{scores}"
    )


def pareto(search: Path) -> None:
    """Every completed trial's validation (MoRF, LeRF), the Pareto front, the chosen trial and the thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.hpo.ax_study import ax_seam
    from pipeline.hpo.ax_study.study import Study
    from pipeline.hpo.ax_study.trial_state import TrialState
    from pipeline.hpo.outputs.folder import SearchFolder

    folder = SearchFolder(search)
    ax_seam.quiet_ax()
    study = Study.read(search, folder.space())
    records = [r for r in study.records() if r.status is TrialState.COMPLETED]
    front = {r.index for r in study.pareto()}
    chosen = json.loads((search / "metrics.json").read_text())["trial"]
    figure, axis = plt.subplots(figsize=(5.2, 4.0))
    axis.scatter(
        [r.metrics["road_morf_auc"] for r in records],
        [r.metrics["road_lerf_auc"] for r in records],
        c=["tab:blue" if r.index in front else "lightgrey" for r in records],
        s=28,
        label="trials",
    )
    best = next(r for r in records if r.index == chosen)
    axis.scatter(
        [best.metrics["road_morf_auc"]],
        [best.metrics["road_lerf_auc"]],
        marker="*",
        s=220,
        c="tab:red",
        label=f"final head (trial {chosen})",
    )
    for name, value in study.thresholds.items():
        (axis.axvline if name == "road_morf_auc" else axis.axhline)(value, color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("ROAD MoRF AUC (lower is better)")
    axis.set_ylabel("ROAD LeRF AUC (higher is better)")
    axis.set_title(f"{len(records)} demo trials on validation; blue: Pareto front", fontsize=9)
    axis.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    figure.savefig(IMAGES / "pareto.png", dpi=110)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def mlflow_screenshot(tracking_uri: str) -> None:
    """The search's experiment in the MLflow UI, by headless Chromium (Debian's ``chromium`` package)."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            tracking_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(12)
        url = f"http://127.0.0.1:{port}/#/experiments/1?workflowType=machine_learning"
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [
                    "chromium",
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={profile}",
                    "--window-size=1400,900",
                    "--virtual-time-budget=15000",
                    f"--screenshot={IMAGES / 'mlflow_search.png'}",
                    url,
                ],
                check=True,
                timeout=120,
            )
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search", type=Path, default=DEMO_SEARCH, help="a finished demo search's folder")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="the search's MLflow store")
    parser.add_argument("--mlflow-screenshot", action="store_true", help="also the MLflow UI (needs chromium)")
    args = parser.parse_args()
    comparison(args.search, "val", "readme_comparison.md", limit=4, image="demo_maps.png")
    comparison(args.search, "test", "demo_test_comparison.md")
    pareto(args.search)
    if args.mlflow_screenshot:
        mlflow_screenshot(args.tracking_uri)
    print(
        f"wrote {', '.join(str(p) for p in sorted(IMAGES.glob('*.png')))}, {RESULTS / 'readme_comparison.md'} "
        f"and {RESULTS / 'demo_test_comparison.md'}"
    )


if __name__ == "__main__":
    main()
