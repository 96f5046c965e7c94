"""Train a CA-Stream on a frozen backbone from an experiment config, measure its top-1 agreement with the
unchanged network, and save / load it (``stream.pt`` reads with ``torch.load(..., weights_only=True)``).

Only the stream trains; the backbone and its classifier stay frozen in eval mode, so their BatchNorm
statistics never move (`FrozenNetwork.train` is a no-op). The target is the dataset's labels on ImageNet and
cross-entropy to the frozen network's own top-1 elsewhere. (Distilling to its softmax would not train at all:
the stream starts as the original network, where that loss is at its minimum and its gradient is zero.)
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from pipeline import config as configs
from pipeline.config import ExperimentConfig
from pipeline.data.batches import training_batches
from pipeline.data.sources import build_splits
from pipeline.errors import UserError
from pipeline.models.castream import CAStream, CAStreamModel, parameter_count, resolve_layout
from pipeline.models.classifiers import load_classifier
from pipeline.models.device import resolve_device
from pipeline.progress import Progress

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
    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    parameters: int = 0
    target: str = ""
    losses: list[float] = field(default_factory=list)  # mean per epoch
    train: dict = field(default_factory=dict)  # agreement during the last epoch
    evaluation: dict[str, dict] = field(default_factory=dict)  # per split, after training

    def as_dict(self) -> dict:
        return {"steps": self.steps, "images": self.images, "seconds": round(self.seconds, 3),
                "parameters": self.parameters, "target": self.target, "epoch_losses": self.losses,
                "train": self.train, "evaluation": self.evaluation}


@dataclass
class TrainedStream:
    model: CAStreamModel
    summary: StreamSummary
    config: ExperimentConfig


def target_kind(config: ExperimentConfig) -> str:
    """``labels`` or ``prediction`` for the config's ``castream.target`` and dataset."""
    target, imagenet = config.castream.target, config.data.dataset == "imagenet"
    if target == "auto":
        target = "labels" if imagenet else "prediction"
    if target == "labels" and config.castream.temperature is not None:
        raise UserError(f"castream.temperature = {config.castream.temperature:g} only acts on the prediction target "
                        "(distillation); drop it or use castream.target=prediction")
    if target == "labels" and not imagenet:
        raise UserError(f"castream.target = 'labels' needs labels that are the backbone's classes (ImageNet); "
                        f"data.dataset = {config.data.dataset!r} has none: use castream.target=prediction")
    return target


def prediction_target(logits: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """The distillation target from the unchanged network's logits: its top-1, or its softmax at
    ``temperature`` (a probability target for cross-entropy)."""
    if temperature is None:
        return logits.argmax(1)
    return (logits.float() / temperature).softmax(1)


def build_stream_model(config: ExperimentConfig, device: torch.device, stream: CAStream | None = None) -> CAStreamModel:
    """The config's frozen backbone with a stream (a fresh one, seeded with ``train.seed``, unless given)."""
    classifier = load_classifier(config.model.backbone, config.model.backbone_weights)
    layout = resolve_layout(config.model.backbone, config.castream.points, config.castream.pool)
    model = CAStreamModel(classifier, layout, stream, seed=config.train.seed)
    return model.to(device)


def _optimizer(stream: CAStream, config: ExperimentConfig) -> torch.optim.Optimizer:
    settings = config.castream
    if settings.optimizer == "sgd":
        return torch.optim.SGD(stream.parameters(), lr=settings.lr, momentum=settings.momentum,
                               weight_decay=settings.weight_decay)
    return torch.optim.AdamW(stream.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


def train_stream(config: ExperimentConfig, progress: bool = True) -> TrainedStream:
    """Train a stream for ``config`` (``castream`` section; batch size, seed, device from ``train``)."""
    device = resolve_device(config.train.device)
    kind = target_kind(config)
    model = build_stream_model(config, device)
    size = model.classifier.preprocessing.input_size
    splits = build_splits(config.data, size)
    if len(splits.train) == 0:
        raise UserError("the training split is empty; check data.root and data.train_limit")
    batches = training_batches(splits.train, config, size, device)
    epochs, temperature = config.castream.epochs, config.castream.temperature
    optimizer = _optimizer(model.stream, config)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(batches))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    soft = kind == "prediction" and temperature is not None
    summary = StreamSummary(parameters=parameter_count(model.stream),
                            target=f"prediction (softmax at temperature {temperature:g})" if soft else kind)
    started = time.perf_counter()
    model.train()
    with Progress(epochs * len(batches), "training CA-Stream", "steps", enabled=progress) as bar:
        for _ in range(epochs):
            agreement, total = Agreement(), 0.0
            for step, (images, labels) in enumerate(batches, 1):
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                with autocast:
                    output = model.run(images, original=True)
                    target = labels if kind == "labels" else prediction_target(output.original, temperature)
                    loss = F.cross_entropy(output.logits.float(), target)
                if not torch.isfinite(loss):
                    raise UserError(f"the CA-Stream loss diverged at step {summary.steps}: {float(loss)}; "
                                    "lower castream.lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                agreement.add(output.logits.detach(), output.original, labels if kind == "labels" else None)
                total += float(loss.detach())
                summary.steps += 1
                summary.images += images.shape[0]
                bar.update(status=f"mean loss {total / step:.4f}")
            summary.losses.append(round(total / max(len(batches), 1), 5))
            summary.train = agreement.as_dict()
    model.eval()
    summary.seconds = time.perf_counter() - started
    return TrainedStream(model, summary, config)


@torch.no_grad()
def measure_agreement(model: CAStreamModel, dataset: Dataset, batch_size: int, labelled: bool,
                      progress: bool = False) -> Agreement:
    """Top-1 agreement of the stream model with the unchanged network over ``dataset`` (and accuracy when
    ``labelled``: the dataset's labels are the backbone's classes)."""
    model.eval()
    device = next(model.stream.parameters()).device
    agreement = Agreement()
    loader = DataLoader(dataset, batch_size=batch_size)
    with Progress(len(loader), "agreement", "batches", enabled=progress) as bar:
        for images, labels in loader:
            output = model.run(images.to(device), original=True)
            agreement.add(output.logits, output.original, labels.to(device) if labelled else None)
            bar.update()
    return agreement


def evaluate_splits(trained: TrainedStream, splits: Sequence[str] = ("val", "test")) -> None:
    """Fill ``trained.summary.evaluation`` with the agreement on the config's ``splits``."""
    config = trained.config
    data = build_splits(config.data, trained.model.classifier.preprocessing.input_size)
    for name in splits:
        agreement = measure_agreement(trained.model, getattr(data, name), config.evaluation.batch_size,
                                      labelled=config.data.dataset == "imagenet")
        trained.summary.evaluation[name] = agreement.as_dict()


def save_stream(trained: TrainedStream, directory: str | Path) -> Path:
    """Write ``stream.pt`` (the stream's state with its backbone, layout and widths), ``config.yaml`` and
    ``castream.json`` (the summary)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = trained.model
    torch.save({"backbone": model.classifier.name, "points": list(model.layout.points), "pool": model.layout.pool,
                "widths": list(model.stream.widths),
                "state": {name: value.detach().cpu() for name, value in model.stream.state_dict().items()}},
               directory / STREAM_FILE)
    configs.dump(trained.config, directory / CONFIG_FILE)
    (directory / SUMMARY_FILE).write_text(json.dumps(trained.summary.as_dict(), indent=2))
    return directory


def load_stream(directory: str | Path, device: str = "auto",
                overrides: Sequence[str] = ()) -> tuple[CAStreamModel, ExperimentConfig]:
    """The stream model saved in ``directory`` by ``save_stream`` (``overrides`` as ``--set``) on ``device``."""
    directory = Path(directory)
    for name in (STREAM_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise UserError(f"{directory} has no {name}; pass a folder written by `python -m pipeline.castream`")
    config = configs.load(directory / CONFIG_FILE, overrides)
    saved = torch.load(directory / STREAM_FILE, map_location="cpu", weights_only=True)
    layout = resolve_layout(config.model.backbone, config.castream.points, config.castream.pool)
    if saved["backbone"] != config.model.backbone or (tuple(saved["points"]), saved["pool"]) != (
            layout.points, layout.pool):
        raise UserError(f"{directory / STREAM_FILE} is a CA-Stream for {saved['backbone']!r} at "
                        f"{', '.join(saved['points'])} -> {saved['pool']}, not for {config.model.backbone!r} at "
                        f"{layout.describe()}; train one for this backbone with `python -m pipeline.castream`")
    stream = CAStream(saved["widths"])
    stream.load_state_dict(saved["state"])
    model = build_stream_model(config, resolve_device(device, "--device"), stream)
    model.eval()
    return model, config
