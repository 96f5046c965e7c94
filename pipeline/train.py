"""Train one P-TAME head from a config: ``python -m pipeline.train --experiment experiments/demo.yaml``.

Writes the head-only ``state_dict`` (``head.pt``, loads with ``torch.load(..., weights_only=True)``) and the
fully resolved ``config.yaml``, which ``python -m pipeline.train --config config.yaml`` reproduces.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pipeline import cli
from pipeline import config as configs
from pipeline.cli import coverage_line
from pipeline.resources import experiment_file


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__.splitlines()[0])
    cli.add_config_arguments(parser)
    parser.add_argument("--out", type=Path, help="output folder (default: runs/<name>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    config = configs.load(experiment_file(args.experiment) if args.experiment else None, args.overrides)
    out = args.out or Path("runs") / config.name

    from pipeline.training.head_training import train_head  # torch and the models: after the arguments are checked
    from pipeline.training.saved_head import CONFIG_FILE, HEAD_FILE, save_head

    print(
        f"training a P-TAME head: backbone {config.model.backbone}, auxiliary {config.model.auxiliary}, "
        f"λ1={config.loss.lambda1:g} λ2={config.loss.lambda2:g} λ3={config.loss.variation_weight:g} "
        f"λ_area={config.loss.lambda_area:g}, {config.loss.describe()}"
    )
    trained = train_head(config, progress=not args.no_progress)
    save_head(trained, out)
    summary = trained.summary
    print(
        f"trained {summary.steps} steps ({summary.images} images) in {summary.seconds:.1f} s, "
        f"final loss {summary.last.get('loss', float('nan')):.4f}; wrote {out}/{HEAD_FILE} and {out}/{CONFIG_FILE}"
    )
    print(coverage_line(trained.coverage))
    return 0


if __name__ == "__main__":
    cli.run(main)
