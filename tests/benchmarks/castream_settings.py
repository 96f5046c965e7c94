"""CA-Stream settings compared on the demo's validation split only (the test split is not read).

    python tests/benchmarks/castream_settings.py [--seeds 0 1 2] [--out FILE.md]

Trains a CA-Stream on the offline demo (`experiments/demo.yaml`) for each candidate setting and training seed and
prints, on the validation views: the top-1 agreement with the unchanged EfficientNet-Lite0, per seed and as a mean,
and how far the last attention moved from uniform (its peak over the uniform value, mean over the views: 1 is GAP).
Agreement alone would favour a stream that does not move (an untrained stream agrees on every view), so the two are
read together: the evidence for `pipeline.config.CAStreamConfig`'s defaults.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from pipeline import config as configs  # noqa: E402
from pipeline.data.sources import build_splits  # noqa: E402
from pipeline.training.castream_training import evaluate_splits, train_stream  # noqa: E402
from tests.benchmarks.reporting import described_commit, publish  # noqa: E402

SETTINGS = {
    "prediction target (softmax + 0.1 toward top-1), last projection at identity": [],
    "top-1 target, last projection at identity": ["castream.top1_weight=1.0"],
    "prediction target, last projection trained": ["castream.train_last_projection=true"],
    "prediction target, last projection at identity, lr 3e-5": ["castream.lr=3e-5"],
}


@torch.no_grad()
def attention_peak(trained) -> float:
    """The last attention's peak over the uniform value, mean over the validation views (1: GAP)."""
    config = trained.config
    model = trained.model.eval()
    split = build_splits(config.data, model.classifier.preprocessing.input_size).val
    peaks = []
    for images, _ in DataLoader(split, batch_size=config.evaluation.batch_size):
        attention = model.run(images).attentions[-1].flatten(1)
        peaks.append(attention.amax(1) * attention.shape[1])
    return float(torch.cat(peaks).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, help="also write the table as Markdown here")
    args = parser.parse_args()
    rows = []
    for label, overrides in SETTINGS.items():
        agreements, peaks = [], []
        for seed in args.seeds:
            config = configs.load(REPO / "experiments" / "demo.yaml", [*overrides, f"train.seed={seed}"])
            trained = train_stream(config, progress=False)
            evaluate_splits(trained, splits=("val",))
            agreements.append(trained.summary.evaluation["val"]["top1_agreement"])
            peaks.append(attention_peak(trained))
            print(
                f"{label}, seed {seed}: validation agreement {agreements[-1]:.4f}, last attention peak "
                f"{peaks[-1]:.2f}x uniform",
                flush=True,
            )
        rows.append((label, agreements, peaks))
    images = trained.summary.evaluation["val"]["images"]
    commit = described_commit()
    lines = [
        f"Measured {date.today()} at commit {commit} on {platform.node()}: "
        f"`python tests/benchmarks/castream_settings.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"Top-1 agreement with EfficientNet-Lite0 on the demo's {images} validation views (train.seed "
        f"{', '.join(map(str, args.seeds))}):",
        "",
        "| setting | agreement per seed | mean | last attention peak / uniform (mean of seeds) |",
        "|---|---|---:|---:|",
    ]
    for label, agreements, peaks in rows:
        lines.append(
            f"| {label} | {', '.join(f'{a:.3f}' for a in agreements)} | {statistics.mean(agreements):.3f} | "
            f"{statistics.mean(peaks):.2f} |"
        )
    text = "\n".join(lines)
    print()
    publish(text, args.out)


if __name__ == "__main__":
    main()
