"""What the P-TAME head, masking and loss add to a training step, measured side by side.

    python tests/benchmarks/train_step.py [--batch 16] [--repeats 7]

Prints ms/image of (a) the unavoidable work: backbone forward on the clean image + auxiliary forward +
backbone forward/backward on a masked image, (b) our full training step (head, masking, loss, optimiser),
and (c) a naive head that upsamples every feature channel and computes all classes, and the overhead
ratios (b)/(a) - 1 and (c)/(a) - 1. Measurements are interleaved so machine noise hits all alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F

from pipeline.config import LossConfig, ModelConfig
from pipeline.models.head import AttentionHead, upsample
from pipeline.models.loading import build_explainer, load_models
from pipeline.training.loop import training_step
from pipeline.training.loss import ptame_loss
from pipeline.training.masking import mask_images


def bare_work(explainer, images: torch.Tensor, autocast: AbstractContextManager = nullcontext()) -> None:
    """Clean forward, auxiliary forward, masked forward/backward: what any P-TAME step must do."""
    with autocast:
        with torch.no_grad():
            targets = explainer.classifier(images).argmax(1)
            explainer.auxiliary(images)
        masked = images.clone().requires_grad_(True)
        logits = explainer.classifier(masked)
    F.cross_entropy(logits.float(), targets).backward()


def naive_step(explainer, images: torch.Tensor, loss: LossConfig) -> None:
    """Upsample all branch channels, concat, fuse all classes, sigmoid, then select."""
    head: AttentionHead = explainer.head
    with torch.no_grad():
        targets = explainer.classifier(images).argmax(1)
        features = explainer.auxiliary(images)
    size = features[0].shape[-2:]
    hidden = torch.cat([upsample(b(f), size) for b, f in zip(head.branches, features)], dim=1)
    maps = torch.sigmoid(head.fuse(hidden))
    own = maps[torch.arange(images.shape[0]), targets]
    masked_logits = explainer.classifier(mask_images(images, own, explainer.classifier.mean))
    terms = ptame_loss(masked_logits, targets, maps[:, targets], loss)
    terms.total.backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--auxiliary", default="efficientnet_lite1")
    parser.add_argument("--auxiliary-weights", help="state_dict file, or 'random' (timing only)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = ModelConfig(backbone=args.backbone, auxiliary=args.auxiliary, auxiliary_weights=args.auxiliary_weights)
    models = load_models(model, torch.device("cpu"))
    explainer = build_explainer(models, model, seed=0)
    explainer.head.train()
    optimizer = torch.optim.AdamW(explainer.head.parameters(), lr=1e-4)
    loss = LossConfig(lambda1=0.5, lambda2=0.4)
    size = models.classifier.preprocessing.input_size
    images = torch.rand(args.batch, 3, size, size).contiguous(memory_format=torch.channels_last)

    def ours() -> None:
        optimizer.zero_grad(set_to_none=True)
        training_step(explainer, images, loss).total.backward()
        optimizer.step()

    runs = {
        "bare work": lambda: bare_work(explainer, images),
        "P-TAME step": ours,
        "naive head step": lambda: naive_step(explainer, images, loss),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, run in runs.items():
        run()  # warm-up
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1000 / args.batch)
    base = statistics.median(times["bare work"])
    print(
        f"{args.backbone} backbone, {args.auxiliary} auxiliary, batch {args.batch}, CPU, "
        f"{args.repeats} interleaved repeats"
    )
    for name, values in times.items():
        median = statistics.median(values)
        extra = "" if name == "bare work" else f"   overhead vs bare work: {100 * (median / base - 1):+.0f}%"
        print(f"  {name:16s} {median:7.1f} ms/image (min {min(values):.1f}, max {max(values):.1f}){extra}")


if __name__ == "__main__":
    main()
