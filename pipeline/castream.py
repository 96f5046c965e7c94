"""Train a CA-Stream on a frozen backbone: ``python -m pipeline.castream --experiment experiments/demo.yaml``.

Writes ``stream.pt`` (loads with ``torch.load(..., weights_only=True)``), the resolved ``config.yaml`` and
``castream.json`` (loss per epoch, top-1 agreement with the unchanged network on the validation and test
splits, accuracy where labels are the backbone's classes, parameter count, seconds).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from pipeline import cli
from pipeline import config as configs
from pipeline.resources import experiment_file


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.castream", description=__doc__.splitlines()[0])
    cli.add_config_arguments(parser)
    parser.add_argument("--out", type=Path, help="output folder (default: runs/<name>-castream)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    config = configs.load(experiment_file(args.experiment) if args.experiment else None, args.overrides)
    out = args.out or Path("runs") / f"{config.name}-castream"

    from pipeline.training.stream_training import (CONFIG_FILE, STREAM_FILE, SUMMARY_FILE, evaluate_splits,
                                                   save_stream, target_kind, train_stream)

    settings = config.castream
    target = target_kind(config)
    if target == "prediction" and settings.temperature is not None:
        target += f" (softmax at temperature {settings.temperature:g})"
    print(f"training a CA-Stream: backbone {config.model.backbone}, target {target}, "
          f"{settings.epochs} epoch(s) of {settings.optimizer} lr {settings.lr:g} "
          f"weight decay {settings.weight_decay:g}")
    trained = train_stream(config, progress=not args.no_progress)
    summary = trained.summary
    print(f"stream at {trained.model.layout.describe()}: {summary.parameters:,} parameters; trained {summary.steps} "
          f"steps ({summary.images} images) in {summary.seconds:.1f} s, loss per epoch "
          f"{', '.join(f'{loss:.4f}' for loss in summary.losses)}")
    evaluate_splits(trained)
    for split, values in summary.evaluation.items():
        accuracy = f", accuracy {values['accuracy']:.4f}" if "accuracy" in values else ""
        print(f"{split}: top-1 agreement with {config.model.backbone} {values['top1_agreement']:.4f} "
              f"on {values['images']} images{accuracy}")
    save_stream(trained, out)
    print(f"wrote {out}/{STREAM_FILE}, {out}/{CONFIG_FILE} and {out}/{SUMMARY_FILE}")
    return 0


if __name__ == "__main__":
    cli.run(main)
