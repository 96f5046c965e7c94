"""Explanation maps for your own images: ``python -m pipeline.explain --head DIR IMAGE... --out DIR``.

Writes one PNG overlay per image for the predicted class, or for ``--class N``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch

from pipeline import cli
from pipeline.data import plain_images
from pipeline.plots import save_overlay
from pipeline.train import load_explainer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.explain", description=__doc__.splitlines()[0])
    parser.add_argument("--head", required=True, type=Path, help="folder written by pipeline.train")
    parser.add_argument("images", nargs="+", help="image files or folders of images")
    parser.add_argument("--out", type=Path, default=Path("explanations"), help="output folder")
    parser.add_argument("--class", dest="class_index", type=int, help="explain this class instead of the prediction")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    explainer, _ = load_explainer(args.head, args.device)
    classifier = explainer.classifier
    images = plain_images(args.images, classifier.preprocessing.input_size)
    if args.class_index is not None and not 0 <= args.class_index < explainer.head.num_classes:
        parser.error(f"--class {args.class_index} is outside 0..{explainer.head.num_classes - 1}")
    args.out.mkdir(parents=True, exist_ok=True)
    device = classifier.mean.device
    for index, path in enumerate(images.paths):
        image = images[index][0].unsqueeze(0).to(device)
        classes = None if args.class_index is None else torch.tensor([args.class_index])
        result = explainer.explain(image, classes)
        target = int(result.classes[0])
        probability = float(result.logits.softmax(1)[0, target])
        title = f"{classifier.category(target)} ({probability:.2f})"
        written = save_overlay(image[0].cpu(), result.saliency[0].cpu(), args.out / f"{path.stem}.png", title)
        print(f"{path}: {title} -> {written}")
    return 0


if __name__ == "__main__":
    cli.run(main)
