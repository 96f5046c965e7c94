"""Frozen networks on the CPU in parts of a few images against whole batches, side by side.

    python tests/benchmarks/cpu_parts.py [--repeats 5] [--out benchmarks/results/cpu_parts.md]

EfficientNet-Lite0 (the demo's backbone): the forward pass of 32 images (as ROAD classifies imputed images) and the
forward and backward pass to the input of 16 (as a training step's masked pass), run whole and in parts of 2, 4,
8 and 16 images (`pipeline.models.classifiers.in_parts` with ``CPU_PART_IMAGES`` set), in a shuffled order, each
``--repeats`` times. Prints the median ms per image and the ratio to the whole batch, and checks that the outputs
and input gradients are bit-identical to the whole batch's, per part size.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from datetime import date
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

from pipeline.models import classifiers  # noqa: E402
from pipeline.models.classifiers import in_parts, load_classifier  # noqa: E402
from tests.benchmarks.reporting import described_commit, publish  # noqa: E402

PARTS = (2, 4, 8, 16, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the table as Markdown here")
    args = parser.parse_args()
    classifier = load_classifier("efficientnet_lite0")
    images = torch.rand(32, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    run = partial(in_parts, classifier)

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return run(images)

    def backward() -> torch.Tensor:
        batch = images[:16].clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(run(batch), torch.arange(16)).backward()
        return batch.grad

    passes = {"forward, 32 images": (forward, 32), "forward and backward, 16 images": (backward, 16)}
    whole: dict[str, torch.Tensor] = {}
    seconds: dict[tuple[str, int], list[float]] = {}
    largest_difference: dict[int, float] = dict.fromkeys(PARTS, 0.0)  # max |part - whole| per part size
    order = [(name, part) for name in passes for part in PARTS] * args.repeats
    random.Random(0).shuffle(order)
    for name in passes:  # the whole batch's result first, to compare with
        classifiers.CPU_PART_IMAGES = 32
        whole[name] = passes[name][0]()
    for name, part in order:
        classifiers.CPU_PART_IMAGES = part
        started = time.perf_counter()
        result = passes[name][0]()
        seconds.setdefault((name, part), []).append((time.perf_counter() - started) * 1000 / passes[name][1])
        difference = float((result - whole[name]).abs().max())
        largest_difference[part] = max(largest_difference[part], difference)
    classifiers.CPU_PART_IMAGES = 4
    commit = described_commit()
    lines = [
        f"Measured {date.today()} at commit {commit} on {platform.node()} ({platform.machine()}, "
        f"{torch.get_num_threads()} torch threads): `python tests/benchmarks/cpu_parts.py "
        f"{' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"EfficientNet-Lite0 at 224 px, median of {args.repeats} shuffled runs, ms per image (ratio to the whole "
        "batch):",
        "",
        "| pass | " + " | ".join(f"parts of {p}" for p in PARTS) + " |",
        "|---|" + "---:|" * len(PARTS),
    ]
    for name, (_, batch) in passes.items():
        reference = statistics.median(seconds[(name, batch if batch in PARTS else 32)])
        cells = []
        for part in PARTS:
            median = statistics.median(seconds[(name, part)])
            cells.append(f"{median:.1f} ({median / reference:.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    same = [str(part) for part in PARTS if largest_difference[part] == 0.0]
    differ = [
        f"{part} (largest difference {largest_difference[part]:.1e})"
        for part in PARTS
        if largest_difference[part] != 0.0
    ]
    lines += [
        "",
        f"Outputs and input gradients bit-identical to the whole batch's in every run: parts of "
        f"{', '.join(same) or 'none'}; not: parts of {', '.join(differ) or 'none'}.",
    ]
    text = "\n".join(lines)
    publish(text, args.out)


if __name__ == "__main__":
    main()
