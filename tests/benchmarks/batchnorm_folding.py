"""BatchNorms folded into their convolutions against the network as loaded, side by side in one run.

    python tests/benchmarks/batchnorm_folding.py [--backbone efficientnet_lite0] [--repeats 7] [--out FILE.md]

Loads the backbone twice (as `load_models` does, channels-last, with and without `fold_batch_norms`), then
alternates ``--repeats`` times: a ROAD-like forward of 32 images and a training-like forward + backward to the
input of 16 images (in the CPU parts of `in_parts`). Prints the median seconds of each, their ratio, how many
BatchNorms were folded, and how far the folded network's logits and input gradients are from the unfolded ones.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

from pipeline.models.classifiers import Classifier, in_parts, load_classifier
from pipeline.models.folding import fold_batch_norms
from tests.benchmarks.reporting import described_commit, publish


def loaded(name: str, fold: bool) -> tuple[Classifier, int]:
    classifier = load_classifier(name)
    size = classifier.preprocessing.input_size
    probe = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    folded = fold_batch_norms(classifier.network, classifier.normalize(probe)) if fold else 0
    return classifier.to(memory_format=torch.channels_last), folded


def forward(classifier: Classifier, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return in_parts(classifier, images)


def input_gradient(classifier: Classifier, images: torch.Tensor) -> torch.Tensor:
    inputs = images.clone().requires_grad_(True)
    in_parts(classifier, inputs).logsumexp(1).sum().backward()
    return inputs.grad


def seconds(work, *arguments) -> float:
    started = time.perf_counter()
    work(*arguments)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, help="also write the result as Markdown here")
    args = parser.parse_args()
    unfolded, _ = loaded(args.backbone, fold=False)
    folded, count = loaded(args.backbone, fold=True)
    size = unfolded.preprocessing.input_size
    images = torch.rand(32, 3, size, size, generator=torch.Generator().manual_seed(1))
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for label, classifier in (("as loaded", unfolded), ("folded", folded)):
            times.setdefault(("forward of 32", label), []).append(seconds(forward, classifier, images))
            gradient_time = seconds(input_gradient, classifier, images[:16])
            times.setdefault(("forward + input gradient of 16", label), []).append(gradient_time)
    logits = (forward(folded, images) - forward(unfolded, images)).abs().max().item()
    reference = input_gradient(unfolded, images[:16])
    gradient_differences = (input_gradient(folded, images[:16]) - reference).abs().flatten()
    gradients = gradient_differences.max().item()
    # ReLU6 is not differentiable at 0 and 6: a unit that rounding moves across a kink changes the gradient there
    typical = gradient_differences.kthvalue(int(0.999 * gradient_differences.numel())).values.item()
    commit = described_commit()
    lines = [
        f"Measured {date.today()} at commit {commit} on {platform.node()} ({platform.machine()}, "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, torch {torch.__version__}): "
        f"`python tests/benchmarks/batchnorm_folding.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"{args.backbone}, {count} BatchNorms folded, median of {args.repeats} alternated runs each:",
        "",
        "| work | as loaded s | folded s | as loaded / folded |",
        "|---|---:|---:|---:|",
    ]
    for work in ("forward of 32", "forward + input gradient of 16"):
        before, after = (statistics.median(times[(work, label)]) for label in ("as loaded", "folded"))
        lines.append(f"| {work} | {before:.3f} | {after:.3f} | {before / after:.2f} |")
    lines += [
        "",
        f"Largest difference, folded against as loaded: logits {logits:.1e}; input gradients {gradients:.1e} (99.9 % "
        f"of them within {typical:.1e}; the largest input gradient is {reference.abs().max().item():.1e}).",
    ]
    text = "\n".join(lines)
    publish(text, args.out)


if __name__ == "__main__":
    main()
