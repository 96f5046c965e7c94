"""Explanation maps for your own images: ``python -m pipeline.explain (--head DIR | --model URI) IMAGE... --out DIR``.

Writes one PNG overlay per image for the predicted class, or for ``--class N``. ``--model`` takes a registered
explainer (``models:/ptame-<backbone>-<auxiliary>/<version>``, or ``@<alias>`` for a search's choice). A map whose
class the head was not trained on is marked as untrained in its title and on the console: it is the head's initial
row, not an explanation.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from pipeline import cli
from pipeline.cli import add_device_argument
from pipeline.data.sources import plain_images
from pipeline.models.explainer import Explainer
from pipeline.reports.plots import save_overlay
from pipeline.training.saved_head import load_explainer

UNTRAINED_MARK = "UNTRAINED"


def registered_explainer(uri: str, tracking_uri: str | None) -> tuple[Explainer, int]:
    """The explainer and its ``min_class_count`` from a registered model URI (``models:/NAME/VERSION`` or
    ``@ALIAS``)."""
    from pipeline.tracking.serving import load_registered
    from pipeline.tracking.stores import check_tracking_server, resolve_tracking_uri

    check_tracking_server(tracking_uri)
    model = load_registered(uri, resolve_tracking_uri(tracking_uri))
    return model.explainer, model.config.evaluation.min_class_count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.explain", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--head", type=Path, help="folder written by pipeline.train")
    source.add_argument(
        "--model",
        metavar="URI",
        help="a registered explainer, e.g. models:/NAME/VERSION or models:/NAME@ALIAS (a search's choice)",
    )
    parser.add_argument("images", nargs="+", help="image files or folders of images")
    parser.add_argument("--out", type=Path, default=Path("explanations"), help="output folder")
    parser.add_argument("--class", dest="class_index", type=int, help="explain this class instead of the prediction")
    parser.add_argument(
        "--min-count",
        type=int,
        help="training images a class needs to count as trained (default: the head's evaluation.min_class_count)",
    )
    add_device_argument(parser)
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI for --model (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
    )
    args = parser.parse_args(argv)
    if args.head is not None:
        explainer, config = load_explainer(args.head, args.device)
        min_count = config.evaluation.min_class_count
    else:
        explainer, min_count = registered_explainer(args.model, args.tracking_uri)
    min_count = min_count if args.min_count is None else args.min_count
    classifier = explainer.classifier
    images = plain_images(args.images, classifier.preprocessing.input_size)
    if args.class_index is not None and not 0 <= args.class_index < explainer.head.num_classes:
        parser.error(f"--class {args.class_index} is outside 0..{explainer.head.num_classes - 1}")
    args.out.mkdir(parents=True, exist_ok=True)
    device = classifier.mean.device
    for index, path in enumerate(images.paths):
        image = images[index][0].unsqueeze(0).to(device)
        classes = None if args.class_index is None else torch.tensor([args.class_index])
        result = explainer.explain(image, classes, min_count=min_count)
        target = int(result.classes[0])
        probability = float(result.logits.softmax(1)[0, target])
        title = f"{classifier.category(target)} ({probability:.2f})"
        if not bool(result.trained[0]):
            title = f"{UNTRAINED_MARK}: {title}"
        written = save_overlay(image[0].cpu(), result.saliency[0].cpu(), args.out / f"{path.stem}.png", title)
        print(f"{path}: {title} -> {written}")
        if not bool(result.trained[0]):
            count = int(explainer.head.target_counts[target])
            print(
                f"  warning: class {target} was explained {count} time(s) in training (< {min_count}); "
                "this map is the head's untrained initial row, not an explanation"
            )
    return 0


if __name__ == "__main__":
    cli.run(main)
