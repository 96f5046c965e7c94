"""Which demo photos to hold out: the classes EfficientNet-Lite0 predicts on each photo's crops, and the class
coverage of validation and test for every way to hold out photos.

    python tests/benchmarks/demo_photo_split.py [--views 64] [--out FILE.md]

For each bundled photo, the backbone classifies ``--views`` crops of the demo's training recipe (as a training
split of that photo alone would show them) and the evaluation views (a centre view, then crops). A held-out view is
covered when its predicted class was predicted on at least ``evaluation.min_class_count`` (10) training views,
counting the training views of the training photos in proportion to the demo's 384. Prints each photo's top
classes and the splits with one or two validation and one or two test photos ranked by the smaller of the two
coverages: the evidence for `pipeline.data.sources.DEMO_SPLITS`.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
from collections import Counter
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

from pipeline.config import DEFAULT_MIN_COUNT, DataConfig  # noqa: E402
from pipeline.data.sources import DEMO_SPLITS, DemoViews, demo_photos  # noqa: E402
from pipeline.models.classifiers import in_parts, load_classifier  # noqa: E402
from tests.benchmarks.reporting import described_commit, publish  # noqa: E402

DEMO_BACKBONE = "efficientnet_lite0"  # experiments/demo.yaml


@torch.no_grad()
def predictions(classifier, views: DemoViews) -> list[int]:
    images = torch.stack([views[i][0] for i in range(len(views))])
    return in_parts(classifier, images).argmax(1).tolist()


def coverage(
    classes: dict[str, list[int]],
    train: tuple[str, ...],
    held_out: tuple[str, ...],
    evaluation: dict[str, list[int]],
    train_views: int,
) -> float:
    """Share of the held-out photos' evaluation views whose class has DEFAULT_MIN_COUNT training views, with
    ``train_views`` spread evenly over the training photos (their crops' classes scaled to that count)."""
    per_photo = train_views / len(train)
    counts = Counter()
    for name in train:
        for label, count in Counter(classes[name]).items():
            counts[label] += count * per_photo / len(classes[name])
    views = [label for name in held_out for label in evaluation[name]]
    return sum(counts[label] >= DEFAULT_MIN_COUNT for label in views) / len(views)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=64, help="training-recipe crops classified per photo")
    parser.add_argument("--out", type=Path, help="also write the result as Markdown here")
    args = parser.parse_args()
    data = DataConfig()
    classifier = load_classifier(DEMO_BACKBONE)
    size = classifier.preprocessing.input_size
    names = list(demo_photos())
    classes, evaluation = {}, {}
    for name in names:
        classes[name] = predictions(classifier, DemoViews(size, args.views, data.seed, photos=[name]))
        evaluation[name] = predictions(
            classifier, DemoViews(size, data.demo_eval_views // 2, data.seed + 1, random=False, photos=[name])
        )
    lines = ["| photo | top classes of its training-recipe crops (share) |", "|---|---|"]
    for name in names:
        top = Counter(classes[name]).most_common(3)
        lines.append(
            f"| {name} | "
            + ", ".join(f"{classifier.category(label)} ({count / args.views:.2f})" for label, count in top)
            + " |"
        )
    ranked = []
    for held in itertools.chain.from_iterable(itertools.combinations(names, k) for k in (2, 3, 4)):
        for val_count in range(1, len(held)):
            for val in itertools.combinations(held, val_count):
                test = tuple(name for name in held if name not in val)
                if len(val) > 2 or len(test) > 2:
                    continue
                train = tuple(name for name in names if name not in held)
                pair = (
                    coverage(classes, train, val, evaluation, data.demo_train_views),
                    coverage(classes, train, test, evaluation, data.demo_train_views),
                )
                ranked.append((min(pair), pair, val, test))
    ranked.sort(key=lambda item: (-item[0], -sum(item[1])))
    lines += ["", "| validation photos | test photos | validation coverage | test coverage |", "|---|---|---:|---:|"]
    for _, (val_cover, test_cover), val, test in ranked[:8]:
        lines.append(f"| {', '.join(val)} | {', '.join(test)} | {val_cover:.2f} | {test_cover:.2f} |")
    chosen = tuple(DEMO_SPLITS["train"])
    val, test = (
        coverage(classes, chosen, DEMO_SPLITS[split], evaluation, data.demo_train_views) for split in ("val", "test")
    )
    lines += [
        "",
        f"DEMO_SPLITS (validation {', '.join(DEMO_SPLITS['val'])}; test {', '.join(DEMO_SPLITS['test'])}): "
        f"validation coverage {val:.2f}, test coverage {test:.2f} (estimated from per-photo crops).",
    ]
    commit = described_commit()
    header = (
        f"Measured {date.today()} at commit {commit} on {platform.node()}: "
        f"`python tests/benchmarks/demo_photo_split.py {' '.join(sys.argv[1:])}`".rstrip()
    )
    text = header + "\n\n" + "\n".join(lines)
    publish(text, args.out)


if __name__ == "__main__":
    main()
