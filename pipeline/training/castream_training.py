"""Train a CA-Stream on a frozen backbone from an experiment config, measure its top-1 agreement with the
unchanged network, and save / load it (``stream.pt`` reads with ``torch.load(..., weights_only=True)``).

Only the stream trains; the backbone and its classifier stay frozen in eval mode, so their BatchNorm
statistics never move (`FrozenNetwork.train` is a no-op). The target is the dataset's labels on ImageNet and
elsewhere the frozen network's softmax moved a share ``castream.top1_weight`` toward its own top-1. (Distilling to
its softmax alone would not train at all: the stream starts as the original network, where that loss is at its
minimum and its gradient is zero.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from pipeline import config as configs
from pipeline.config import CAStreamConfig, ExperimentConfig
from pipeline.data.batches import training_batches
from pipeline.data.manifest import SplitRecord
from pipeline.data.sources import build_splits, dataset_size
from pipeline.errors import UserError
from pipeline.models.castream_model import CAStream, CAStreamModel, parameter_count, resolve_layout
from pipeline.models.classifiers import load_classifier
from pipeline.models.device import resolve_device
from pipeline.progress import Progress
from pipeline.training.loop import StepCallback

STREAM_FILE, CONFIG_FILE, SUMMARY_FILE = "stream.pt", "config.yaml", "castream.json"


@dataclass
class Agreement:
    """Top-1 of the stream model against the unchanged network (and the labels, where they are classes)."""

    images: int = 0
    agree: int = 0
    correct: int = 0
    labelled: int = 0

    def add(self, stream_logits: torch.Tensor, original_logits: torch.Tensor, labels: torch.Tensor | None) -> None:
        top = stream_logits.argmax(1)
        self.images += top.shape[0]
        self.agree += int((top == original_logits.argmax(1)).sum())
        if labels is not None:
            self.correct += int((top == labels).sum())
            self.labelled += top.shape[0]

    @property
    def rate(self) -> float:
        return self.agree / self.images if self.images else float("nan")

    def as_dict(self) -> dict[str, float | int]:
        values: dict[str, float | int] = {"images": self.images, "top1_agreement": round(self.rate, 4)}
        if self.labelled:
            values["accuracy"] = round(self.correct / self.labelled, 4)
        return values


@dataclass
class StreamSummary:
    """What a stream's training did (``castream.json``): steps, images, seconds, parameter counts, the target in
    words, the mean loss per epoch, the last epoch's agreement and the agreement per split after training."""

    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    parameters: int = 0
    trained_parameters: int = 0
    target: str = ""
    losses: list[float] = field(default_factory=list)  # mean per epoch
    train: dict = field(default_factory=dict)  # agreement during the last epoch
    evaluation: dict[str, dict] = field(default_factory=dict)  # per split, after training

    def as_dict(self) -> dict:
        return {
            "steps": self.steps,
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "parameters": self.parameters,
            "trained_parameters": self.trained_parameters,
            "target": self.target,
            "epoch_losses": self.losses,
            "train": self.train,
            "evaluation": self.evaluation,
        }


@dataclass
class TrainedStream:
    model: CAStreamModel
    summary: StreamSummary
    config: ExperimentConfig
    splits: SplitRecord  # what each split of its data holds


def target_kind(config: ExperimentConfig) -> str:
    """``labels`` or ``prediction`` for the config's ``castream.target`` and dataset."""
    target, imagenet = config.castream.target, config.data.dataset == "imagenet"
    if target == "auto":
        target = "labels" if imagenet else "prediction"
    if target == "labels" and not imagenet:
        raise UserError(
            f"castream.target = 'labels' needs labels that are the backbone's classes (ImageNet); "
            f"data.dataset = {config.data.dataset!r} has none: use castream.target=prediction"
        )
    return target


def describe_target(config: ExperimentConfig) -> str:
    """The training target in words, for the console and the summary."""
    kind, weight = target_kind(config), config.castream.top1_weight
    if kind == "labels":
        return kind
    return "prediction (top-1)" if weight == 1 else f"prediction (softmax moved {weight:g} toward the top-1)"


def prediction_target(logits: torch.Tensor, top1_weight: float) -> torch.Tensor:
    """The distillation target from the unchanged network's logits: ``(1 - w)·softmax + w·one-hot(top-1)``
    as probabilities for cross-entropy, or the top-1 indices at ``w = 1``."""
    top1 = logits.argmax(1)
    if top1_weight == 1:
        return top1
    return (1 - top1_weight) * logits.float().softmax(1) + top1_weight * F.one_hot(top1, logits.shape[1])


def build_stream_model(config: ExperimentConfig, device: torch.device, stream: CAStream | None = None) -> CAStreamModel:
    """The config's frozen backbone with a stream (a fresh one, seeded with ``train.seed``, unless given)."""
    classifier = load_classifier(config.model.backbone, config.model.backbone_weights)
    layout = resolve_layout(config.model.backbone, config.castream.points, config.castream.pool)
    model = CAStreamModel(classifier, layout, stream, seed=config.train.seed)
    return model.to(device)


def _optimizer(stream: CAStream, castream_config: CAStreamConfig) -> torch.optim.Optimizer:
    stream.projections[-1].requires_grad_(castream_config.train_last_projection)
    parameters = [parameter for parameter in stream.parameters() if parameter.requires_grad]
    if castream_config.optimizer == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=castream_config.lr,
            momentum=castream_config.momentum,
            weight_decay=castream_config.weight_decay,
        )
    return torch.optim.AdamW(parameters, lr=castream_config.lr, weight_decay=castream_config.weight_decay)


def fit_stream(
    model: CAStreamModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    steps_per_epoch: int,
    castream_config: CAStreamConfig,
    kind: str,
    summary: StreamSummary,
    progress: bool = True,
    on_step: StepCallback | None = None,
) -> None:
    """Train ``model.stream`` on ``batches`` of (images, labels) for ``castream_config.epochs`` epochs towards ``kind``
    (``labels`` or ``prediction``), recording steps, images and losses in ``summary``; ``on_step(step, {"loss":
    ..., "agreement": ...})`` after every step (the batch's top-1 agreement with the unchanged network)."""
    device = next(model.stream.parameters()).device
    optimizer = _optimizer(model.stream, castream_config)
    summary.trained_parameters = parameter_count(model.stream, trainable=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=castream_config.epochs * steps_per_epoch)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    model.train()
    with Progress(castream_config.epochs * steps_per_epoch, "training CA-Stream", "steps", enabled=progress) as bar:
        for _ in range(castream_config.epochs):
            agreement, total, step = Agreement(), 0.0, 0
            for step, (images, labels) in enumerate(batches, 1):
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                with autocast:
                    output = model.run(images, original=True)
                    assert output.original is not None  # original=True gives it
                    target = (
                        labels if kind == "labels" else prediction_target(output.original, castream_config.top1_weight)
                    )
                    loss = F.cross_entropy(output.logits.float(), target)
                if not torch.isfinite(loss):
                    raise UserError(
                        f"the CA-Stream loss diverged at step {summary.steps}: {float(loss)}; lower castream.lr"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                agreed = agreement.agree
                agreement.add(output.logits.detach(), output.original, labels if kind == "labels" else None)
                total += float(loss.detach())
                if on_step is not None:
                    on_step(
                        summary.steps,
                        {"loss": float(loss.detach()), "agreement": (agreement.agree - agreed) / images.shape[0]},
                    )
                summary.steps += 1
                summary.images += images.shape[0]
                bar.update(status=f"mean loss {total / step:.4f}")
            summary.losses.append(round(total / max(step, 1), 5))
            summary.train = agreement.as_dict()
    model.eval()


def train_stream(config: ExperimentConfig, progress: bool = True, on_step: StepCallback | None = None) -> TrainedStream:
    """Train a stream for ``config`` (``castream`` section; batch size, seed, device from ``train``); see
    `fit_stream` for ``on_step``."""
    device = resolve_device(config.train.device)
    kind = target_kind(config)
    model = build_stream_model(config, device)
    size = model.classifier.preprocessing.input_size
    splits = build_splits(config.data, size)
    if dataset_size(splits.train) == 0:
        raise UserError("the training split is empty; check data.root and data.train_limit")
    batches = training_batches(splits.train, config, size, device)
    summary = StreamSummary(parameters=parameter_count(model.stream), target=describe_target(config))
    started = time.perf_counter()
    fit_stream(model, batches, len(batches), config.castream, kind, summary, progress, on_step)
    summary.seconds = time.perf_counter() - started
    return TrainedStream(model, summary, config, SplitRecord.of(splits))


@torch.no_grad()
def measure_agreement(
    model: CAStreamModel, dataset: Dataset, batch_size: int, labelled: bool, progress: bool = False
) -> Agreement:
    """Top-1 agreement of the stream model with the unchanged network over ``dataset`` (and accuracy when
    ``labelled``: the dataset's labels are the backbone's classes)."""
    model.eval()
    device = next(model.stream.parameters()).device
    agreement = Agreement()
    loader = DataLoader(dataset, batch_size=batch_size)
    with Progress(len(loader), "agreement", "batches", enabled=progress) as bar:
        for images, labels in loader:
            output = model.run(images.to(device), original=True)
            assert output.original is not None  # original=True gives it
            agreement.add(output.logits, output.original, labels.to(device) if labelled else None)
            bar.update()
    return agreement


def evaluate_splits(trained: TrainedStream, splits: Sequence[str] = ("val", "test")) -> None:
    """Fill ``trained.summary.evaluation`` with the agreement on the config's ``splits``."""
    config = trained.config
    data = build_splits(config.data, trained.model.classifier.preprocessing.input_size)
    for name in splits:
        agreement = measure_agreement(
            trained.model, getattr(data, name), config.evaluation.batch_size, labelled=config.data.dataset == "imagenet"
        )
        trained.summary.evaluation[name] = agreement.as_dict()


def save_stream(trained: TrainedStream, directory: str | Path) -> list[Path]:
    """Write ``stream.pt`` (the stream's state with its backbone, layout and widths), ``config.yaml``,
    ``castream.json`` (the summary) and ``splits.json`` (`pipeline.data.manifest`); returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = trained.model
    torch.save(
        {
            "backbone": model.classifier.name,
            "points": list(model.layout.points),
            "pool": model.layout.pool,
            "widths": list(model.stream.widths),
            "state": {name: value.detach().cpu() for name, value in model.stream.state_dict().items()},
        },
        directory / STREAM_FILE,
    )
    configs.dump(trained.config, directory / CONFIG_FILE)
    (directory / SUMMARY_FILE).write_text(json.dumps(trained.summary.as_dict(), indent=2))
    return [directory / name for name in (STREAM_FILE, CONFIG_FILE, SUMMARY_FILE)] + [trained.splits.write(directory)]


def load_castream(
    directory: str | Path, device: str = "auto", overrides: Sequence[str] = ()
) -> tuple[CAStreamModel, ExperimentConfig]:
    """The stream model saved in ``directory`` by ``save_stream`` (``overrides`` as ``--set``) on ``device``."""
    directory = Path(directory)
    for name in (STREAM_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise UserError(f"{directory} has no {name}; pass a folder written by `python -m pipeline.castream`")
    config = configs.load(directory / CONFIG_FILE, overrides)
    saved = torch.load(directory / STREAM_FILE, map_location="cpu", weights_only=True)
    layout = resolve_layout(config.model.backbone, config.castream.points, config.castream.pool)
    if saved["backbone"] != config.model.backbone or (tuple(saved["points"]), saved["pool"]) != (
        layout.points,
        layout.pool,
    ):
        raise UserError(
            f"{directory / STREAM_FILE} is a CA-Stream for {saved['backbone']!r} at "
            f"{', '.join(saved['points'])} -> {saved['pool']}, not for {config.model.backbone!r} at "
            f"{layout.describe()}; train one for this backbone with `python -m pipeline.castream`"
        )
    stream = CAStream(saved["widths"])
    stream.load_state_dict(saved["state"])
    model = build_stream_model(config, resolve_device(device, "--device"), stream)
    model.eval()
    return model, config
