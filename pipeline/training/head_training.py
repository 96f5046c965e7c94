"""Train one head from a config, on models and data loaded once (`Workbench`) and shared by every run that
needs the same ones, e.g. all trials of a search."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from pipeline.config import ExperimentConfig
from pipeline.data.batches import training_batches
from pipeline.data.manifest import SplitRecord
from pipeline.data.sources import Splits, build_splits, dataset_size
from pipeline.errors import UserError
from pipeline.models.coverage import ClassCoverage
from pipeline.models.device import resolve_device
from pipeline.models.explainer import Explainer
from pipeline.models.loading import Models, build_explainer, load_models
from pipeline.training.checkpoints import Checkpoints
from pipeline.training.frozen_outputs import FrozenOutputs
from pipeline.training.loop import StepCallback, TrainingSummary, train


@dataclass
class Workbench:
    """Models and data loaded once and reused by every run that shares them (e.g. all search trials), with
    the frozen networks' outputs on the training batches those runs share."""

    models: Models
    splits: Splits
    config: ExperimentConfig
    frozen: FrozenOutputs = field(default_factory=FrozenOutputs)

    def serves(self, config: ExperimentConfig) -> bool:
        """True when ``config`` needs exactly these models and data."""
        return (config.model, config.data, config.train.device) == (
            self.config.model,
            self.config.data,
            self.config.train.device,
        )

    @cached_property
    def split_record(self) -> SplitRecord:
        """What each split holds (``splits.json``), recorded once."""
        return SplitRecord.of(self.splits)

    @classmethod
    def load(cls, config: ExperimentConfig) -> Workbench:
        device = resolve_device(config.train.device)
        models = load_models(config.model, device)
        splits = build_splits(config.data, models.classifier.preprocessing.input_size)
        return cls(models, splits, config)


@dataclass
class TrainedHead:
    explainer: Explainer
    summary: TrainingSummary
    config: ExperimentConfig
    bench: Workbench | None = None  # the models and data it was trained on

    @property
    def split_record(self) -> SplitRecord | None:
        """What each split of its data holds (``splits.json``), when its data is known."""
        return self.bench.split_record if self.bench is not None else None

    @property
    def coverage(self) -> ClassCoverage:
        """Which classes the head was trained on, under the config's ``evaluation.min_class_count``."""
        return ClassCoverage.of(self.explainer.head, self.config.evaluation.min_class_count)


def train_head(
    config: ExperimentConfig,
    bench: Workbench | None = None,
    on_step: StepCallback | None = None,
    progress: bool = True,
    checkpoints: Checkpoints | None = None,
) -> TrainedHead:
    """Train a head for ``config``; pass a ``bench`` to reuse loaded models and data, ``checkpoints`` to score it
    during training."""
    if bench is None or not bench.serves(config):
        bench = Workbench.load(config)
    explainer = build_explainer(bench.models, config.model, config.train.seed)
    dataset = bench.splits.train
    if dataset_size(dataset) == 0:
        raise UserError("the training split is empty; check data.root and data.train_limit")
    models = bench.models
    batches = training_batches(dataset, config, models.classifier.preprocessing.input_size, models.device)
    summary = train(
        explainer,
        batches,
        len(batches),
        config.loss,
        config.train,
        models.device,
        on_step=on_step,
        progress=progress,
        frozen=bench.frozen,
        checkpoints=checkpoints,
    )
    return TrainedHead(explainer, summary, config, bench)
