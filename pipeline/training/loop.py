"""One P-TAME training step and the AdamW + OneCycleLR epoch loop around it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial

import torch

from pipeline.config import LossConfig, TrainConfig
from pipeline.models.classifiers import in_parts
from pipeline.models.explainer import Explainer
from pipeline.models.head import activate
from pipeline.progress import Progress
from pipeline.training.checkpoints import Checkpoints, run_checkpoint
from pipeline.training.compiled import CompiledNetwork, compile_enabled
from pipeline.training.frozen_outputs import FrozenOutputs
from pipeline.training.loss import LossTerms, class_subset, ptame_loss, reference_class_subset
from pipeline.training.masking import mask_images

StepCallback = Callable[[int, dict[str, float]], None]
# images -> (the classifier's prediction, the auxiliary features) on the clean images
CleanOutputs = Callable[[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exceeded ``train.max_loss``."""


@dataclass
class TrainingSummary:
    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    compile_seconds: float = 0.0  # first calls of the compiled classifier: compilation plus one pass each
    reused_predictions: int = 0  # batches whose clean predictions an earlier run had made
    reused_features: int = 0  # batches whose auxiliary features an earlier run had computed
    checkpoint_seconds: float = 0.0  # spent in checkpoints (not part of ``seconds``)
    last: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def training_step(
    explainer: Explainer,
    images: torch.Tensor,
    loss: LossConfig,
    generator: torch.Generator | None = None,
    classify: Callable[[torch.Tensor], torch.Tensor] | None = None,
    clean: CleanOutputs | None = None,
) -> LossTerms:
    """Forward pass of one batch: clean prediction, maps of S, masked prediction, loss.

    ``classify`` runs the classifier (default: ``explainer.classifier``; the loop passes its compiled form);
    ``clean`` gives the clean prediction and auxiliary features (default: the argmax of ``classify`` and
    ``explainer.auxiliary``; the loop passes kept ones). The head counts the batch's explained classes and S (its
    class coverage)."""
    classify = classify or explainer.classifier
    with torch.no_grad():
        if clean is not None:
            targets, features = clean(images)
        else:
            targets, features = classify(images).argmax(1), explainer.auxiliary(images)
    if loss.class_subset == "reference":
        classes, position = reference_class_subset(targets)
    else:
        classes, position = class_subset(
            targets, loss.lambda_rand or images.shape[0], explainer.head.num_classes, generator
        )
    explainer.head.record(targets, classes)
    subset_maps = activate(explainer.head(features, classes), training=True)
    own_maps = subset_maps[torch.arange(images.shape[0], device=images.device), position]
    masked = mask_images(images, own_maps, explainer.classifier.mean, explainer.masking)
    masked_logits = classify(masked)
    return ptame_loss(masked_logits, targets, subset_maps, loss)


def _check(terms: LossTerms, step: int, limit: float) -> None:
    value = float(terms.total.detach())
    if not math.isfinite(value) or value > limit:
        raise TrainingDiverged(f"loss diverged at step {step}: {value} (limit train.max_loss = {limit})")


def optimisation_step(
    explainer: Explainer,
    images: torch.Tensor,
    loss: LossConfig,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | None,
    autocast: AbstractContextManager,
    max_loss: float,
    step: int,
    classify: Callable[[torch.Tensor], torch.Tensor] | None = None,
    clean: CleanOutputs | None = None,
) -> LossTerms:
    """Forward, divergence check, backward and optimiser step for one batch."""
    with autocast:
        terms = training_step(explainer, images, loss, generator, classify, clean)
    _check(terms, step, max_loss)
    optimizer.zero_grad(set_to_none=True)
    terms.total.backward()
    optimizer.step()
    return terms


def train(
    explainer: Explainer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    steps_per_epoch: int,
    loss: LossConfig,
    train_config: TrainConfig,
    device: torch.device,
    on_step: StepCallback | None = None,
    progress: bool = True,
    frozen: FrozenOutputs | None = None,
    checkpoints: Checkpoints | None = None,
) -> TrainingSummary:
    """Train ``explainer.head`` for ``train_config.epochs`` epochs; the frozen networks stay in eval mode.

    Batches of another size than the first one run the classifier eagerly when it is compiled. With ``frozen``
    the clean predictions and auxiliary features of batches an earlier run saw unchanged are reused. ``checkpoints``
    score the head at percentages of the steps without changing its training (`run_checkpoint`); their
    `StopTraining` ends it."""
    head = explainer.head
    optimizer = torch.optim.AdamW(
        head.parameters(), lr=train_config.max_lr, weight_decay=train_config.weight_decay, amsgrad=True
    )
    total = steps_per_epoch * train_config.epochs
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=train_config.max_lr, total_steps=total)
    generator = torch.Generator().manual_seed(train_config.seed)
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    compiled: CompiledNetwork | None = None
    reused_before = (frozen.reused, frozen.reused_features) if frozen else (0, 0)
    if frozen is not None:
        frozen.begin(explainer.classifier, explainer.auxiliary)
    summary = TrainingSummary()
    due = checkpoints.due(total) if checkpoints else {}
    started = time.perf_counter()
    head.train()
    with Progress(total, "training", "steps", enabled=progress) as bar:
        for _ in range(train_config.epochs):
            for images, _labels in batches:
                images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                if summary.steps == 0 and compile_enabled(train_config.compile, device):
                    compiled = CompiledNetwork(explainer.classifier, images.shape[0])
                classify = compiled or partial(in_parts, explainer.classifier)
                clean = None
                if frozen is not None:
                    clean = partial(frozen.outputs, summary.steps, classify=classify, extract=explainer.auxiliary)
                terms = optimisation_step(
                    explainer,
                    images,
                    loss,
                    optimizer,
                    generator,
                    autocast,
                    train_config.max_loss,
                    summary.steps,
                    classify,
                    clean,
                )
                schedule.step()
                summary.steps += 1
                summary.images += images.shape[0]
                summary.last = terms.as_floats() | {"lr": float(schedule.get_last_lr()[0])}
                if on_step is not None:
                    on_step(summary.steps, summary.last)
                bar.update(status=f"loss {summary.last['loss']:.4f}")
                if checkpoints is not None and summary.steps in due:  # (due is empty without checkpoints)
                    summary.checkpoint_seconds += run_checkpoint(
                        checkpoints, explainer, due[summary.steps], summary.steps
                    )
    head.eval()
    summary.seconds = time.perf_counter() - started - summary.checkpoint_seconds
    summary.compile_seconds = compiled.compile_seconds if compiled else 0.0
    if frozen is not None:
        summary.reused_predictions = frozen.reused - reused_before[0]
        summary.reused_features = frozen.reused_features - reused_before[1]
    return summary
