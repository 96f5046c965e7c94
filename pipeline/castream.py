"""Train a CA-Stream on a frozen backbone: ``python -m pipeline.castream --experiment experiments/demo.yaml``.

Writes ``stream.pt`` (loads with ``torch.load(..., weights_only=True)``), the resolved ``config.yaml`` and
``castream.json`` (loss per epoch, top-1 agreement with the unchanged network on the validation and test
splits, accuracy where labels are the backbone's classes, parameter count, seconds). With ``--tracking-uri`` or
``--search`` it also logs an MLflow run "castream": the config, the loss and agreement per step, those numbers and
the three files.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence
from pathlib import Path

from pipeline import cli
from pipeline import config as configs
from pipeline.resources import experiment_file


def summary_metrics(summary: dict) -> dict[str, float]:
    """The MLflow metrics of a stream's ``castream.json`` summary."""
    metrics = {key: summary[key] for key in ("parameters", "trained_parameters", "seconds")}
    for split, values in summary["evaluation"].items():
        metrics |= {f"{split}.{key}": value for key, value in values.items() if key != "images"}
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.castream", description=__doc__.splitlines()[0])
    cli.add_config_arguments(parser)
    parser.add_argument("--out", type=Path, help="output folder (default: runs/<name>-castream)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli.add_tracking_arguments(parser, "the stream's training")
    args = parser.parse_args(argv)
    config = configs.load(experiment_file(args.experiment) if args.experiment else None, args.overrides)
    out = args.out or Path("runs") / f"{config.name}-castream"
    cli.check_tracking(args)

    from pipeline.training.castream_training import describe_target, evaluate_splits, save_stream, train_stream

    castream_config = config.castream
    target = describe_target(config)
    run = cli.start_tracking(args, "castream", {"target": target, "config": configs.to_dict(config)})
    print(
        f"training a CA-Stream: backbone {config.model.backbone}, target {target}, "
        f"{castream_config.epochs} epoch(s) of {castream_config.optimizer} lr {castream_config.lr:g} "
        f"weight decay {castream_config.weight_decay:g}"
    )
    with run if run is not None else contextlib.nullcontext():  # a failure marks the MLflow run FAILED
        trained = train_stream(config, progress=not args.no_progress, on_step=run.log_step if run else None)
        summary = trained.summary
        print(
            f"stream at {trained.model.layout.describe()}: {summary.parameters:,} parameters "
            f"({summary.trained_parameters:,} trained); trained {summary.steps} steps ({summary.images} images) "
            f"in {summary.seconds:.1f} s, loss per epoch {', '.join(f'{loss:.4f}' for loss in summary.losses)}"
        )
        evaluate_splits(trained)
        for split, values in summary.evaluation.items():
            accuracy = f", accuracy {values['accuracy']:.4f}" if "accuracy" in values else ""
            print(
                f"{split}: top-1 agreement with {config.model.backbone} {values['top1_agreement']:.4f} "
                f"on {values['images']} images{accuracy}"
            )
        files = save_stream(trained, out)
        if run is not None:
            run.log_metrics(summary_metrics(summary.as_dict()))
            for path in files:
                run.log_artifact(path, "stream")
    print(f"wrote {', '.join(map(str, files))}")
    return 0


if __name__ == "__main__":
    cli.run(main)
