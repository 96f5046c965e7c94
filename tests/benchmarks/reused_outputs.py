"""Training a head with the clean outputs (predictions, auxiliary features) an earlier run kept, against computing
them, side by side.

    python tests/benchmarks/reused_outputs.py [--pairs 3] [--set key=value ...]

Loads the offline demo (or the experiment given with ``--set``) once, trains one head to fill the kept
outputs, then alternates runs that compute the clean outputs (a fresh `FrozenOutputs`) with runs that
reuse them, as the 2nd..20th trials of a search do. Prints each mode's median training seconds, the ratio,
and whether both modes trained the same head (they must: the predictions are the same).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script from anywhere

from pipeline import config as configs  # noqa: E402
from pipeline.training.frozen_outputs import FrozenOutputs  # noqa: E402
from pipeline.training.head_training import Workbench, train_head

DEMO = Path(__file__).resolve().parents[2] / "experiments" / "demo.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    config = configs.load(DEMO, args.overrides)
    bench = Workbench.load(config)
    kept = bench.frozen
    train_head(config, bench, progress=False)  # fills the kept outputs (and warms up)
    seconds: dict[str, list[float]] = {"computed": [], "reused": []}
    heads: dict[str, torch.Tensor] = {}
    for _ in range(args.pairs):
        for mode in seconds:
            bench.frozen = FrozenOutputs() if mode == "computed" else kept
            trained = train_head(config, bench, progress=False)
            assert (trained.summary.reused_predictions > 0) == (mode == "reused")
            seconds[mode].append(trained.summary.seconds)
            heads[mode] = torch.cat([p.detach().flatten() for p in trained.explainer.head.parameters()])
    computed, reused = (statistics.median(seconds[m]) for m in ("computed", "reused"))
    steps = trained.summary.steps
    print(
        f"{config.model.backbone} backbone, {config.model.auxiliary} auxiliary, batch {config.train.batch_size}, "
        f"{steps} steps, {args.pairs} interleaved pairs, {torch.get_num_threads()} threads"
    )
    for mode, values in seconds.items():
        print(
            f"  clean outputs {mode:8s} {statistics.median(values):7.2f} s "
            f"(min {min(values):.2f}, max {max(values):.2f})"
        )
    print(f"  reused / computed: {reused / computed:.3f}; same head: {torch.equal(heads['computed'], heads['reused'])}")


if __name__ == "__main__":
    main()
