"""Train one P-TAME head from a config: ``python -m pipeline.train --experiment experiments/demo.yaml``.

Writes the head-only ``state_dict`` (``head.pt``, loads with ``torch.load(..., weights_only=True)``) and the
fully resolved ``config.yaml``, which ``python -m pipeline.train --config config.yaml`` reproduces.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from pipeline import cli, config as configs
from pipeline.batches import training_batches
from pipeline.config import ExperimentConfig, ModelConfig
from pipeline.data import Splits, build_splits
from pipeline.errors import UserError
from pipeline.models.auxiliary import FeatureExtractor, backbone_features, load_auxiliary
from pipeline.models.classifiers import Classifier, load_classifier
from pipeline.models.contributions import layer_contributions
from pipeline.models.coverage import ClassCoverage
from pipeline.models.explainer import Explainer
from pipeline.models.head import AttentionHead
from pipeline.resources import experiment_file
from pipeline.training.clean_targets import CleanTargets
from pipeline.training.loop import StepCallback, TrainingSummary, train

HEAD_FILE, CONFIG_FILE, SUMMARY_FILE, COUNTS_FILE = "head.pt", "config.yaml", "training.json", "class_counts.json"


DEVICE_HELP = "cpu, cuda, cuda:N or auto (default: a CUDA device when there is one, else the CPU)"


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``: where a command loading a trained head runs, whatever device trained it."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """The device ``name`` (``auto``: CUDA when there is one) given as ``setting``, named in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{setting} {name!r}: no CUDA device is available here; use cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"{setting} {name!r} is not a device; use {DEVICE_HELP}") from None


@dataclass
class Models:
    """The frozen networks of one model config, on their device."""

    classifier: Classifier
    auxiliary: FeatureExtractor
    num_classes: int
    channels: list[int]
    device: torch.device


def load_models(model: ModelConfig, device: torch.device) -> Models:
    """Load the classifier and the auxiliary feature extractor, frozen, on ``device``."""
    classifier = load_classifier(model.backbone, model.backbone_weights)
    if model.auxiliary == "backbone":
        auxiliary = backbone_features(classifier, model.auxiliary_layers)
    else:
        auxiliary = load_auxiliary(model.auxiliary, model.auxiliary_layers, model.auxiliary_weights)
    layout = torch.channels_last
    classifier.to(device, memory_format=layout)
    auxiliary.to(device, memory_format=layout)
    size = classifier.preprocessing.input_size
    with torch.no_grad():
        num_classes = classifier(torch.zeros(1, 3, size, size, device=device)).shape[1]
    return Models(classifier, auxiliary, num_classes, auxiliary.channels(size), device)


@dataclass
class Workbench:
    """Models and data loaded once and reused by every run that shares them (e.g. all search trials), with
    the clean predictions of the training batches those runs share."""

    models: Models
    splits: Splits
    config: ExperimentConfig
    clean_targets: CleanTargets = field(default_factory=CleanTargets)

    def serves(self, config: ExperimentConfig) -> bool:
        """True when ``config`` needs exactly these models and data."""
        return (config.model, config.data, config.train.device) == (
            self.config.model, self.config.data, self.config.train.device)

    @classmethod
    def load(cls, config: ExperimentConfig) -> "Workbench":
        device = resolve_device(config.train.device)
        models = load_models(config.model, device)
        splits = build_splits(config.data, models.classifier.preprocessing.input_size)
        return cls(models, splits, config)


def build_explainer(models: Models, model: ModelConfig, seed: int) -> Explainer:
    """A freshly initialised head (seeded) around the frozen networks."""
    torch.manual_seed(seed)
    head = AttentionHead(models.channels, models.num_classes).to(models.device, memory_format=torch.channels_last)
    return Explainer(models.classifier, models.auxiliary, head, model.masking)


@dataclass
class TrainedHead:
    explainer: Explainer
    summary: TrainingSummary
    config: ExperimentConfig

    @property
    def coverage(self) -> ClassCoverage:
        """Which classes the head was trained on, under the config's ``evaluation.min_class_count``."""
        return ClassCoverage.of(self.explainer.head, self.config.evaluation.min_class_count)


def train_head(config: ExperimentConfig, bench: Workbench | None = None, on_step: StepCallback | None = None,
               progress: bool = True) -> TrainedHead:
    """Train a head for ``config``; pass a ``bench`` to reuse loaded models and data."""
    if bench is None or not bench.serves(config):
        bench = Workbench.load(config)
    explainer = build_explainer(bench.models, config.model, config.train.seed)
    dataset = bench.splits.train
    if len(dataset) == 0:
        raise UserError("the training split is empty; check data.root and data.train_limit")
    models = bench.models
    batches = training_batches(dataset, config, models.classifier.preprocessing.input_size, models.device)
    summary = train(explainer, batches, len(batches), config.loss, config.train, models.device,
                    on_step=on_step, progress=progress, clean_targets=bench.clean_targets)
    return TrainedHead(explainer, summary, config)


def save_head(trained: TrainedHead, directory: str | Path) -> Path:
    """Write ``head.pt``, ``config.yaml``, ``training.json`` (with the layer contributions) and
    ``class_counts.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # On the CPU, so that the file loads on any machine, whatever device trained the head.
    torch.save({name: value.cpu() for name, value in trained.explainer.head.state_dict().items()},
               directory / HEAD_FILE)
    configs.dump(trained.config, directory / CONFIG_FILE)
    summary = trained.summary
    contributions = layer_contributions(trained.explainer, trained.config.evaluation.min_class_count)
    (directory / SUMMARY_FILE).write_text(json.dumps(
        {"steps": summary.steps, "images": summary.images, "seconds": round(summary.seconds, 3),
         "images_per_second": round(summary.images_per_second, 1),
         "compile_seconds": round(summary.compile_seconds, 3), "reused_predictions": summary.reused_predictions,
         "last": summary.last, "class_coverage": trained.coverage.summary(),
         "contributions": [asdict(entry) for entry in contributions]}, indent=2))
    (directory / COUNTS_FILE).write_text(json.dumps(trained.coverage.counts(), indent=1))
    return directory


def load_explainer(directory: str | Path, device: str = "auto",
                   overrides: Sequence[str] = ()) -> tuple[Explainer, ExperimentConfig]:
    """Rebuild a trained explainer from a directory written by ``save_head`` (``overrides`` as ``--set``) on
    ``device`` (``auto``: a CUDA device when there is one, whichever device trained the head)."""
    directory = Path(directory)
    for name in (HEAD_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise UserError(f"{directory} has no {name}; pass a folder written by `python -m pipeline.train`")
    config = configs.load(directory / CONFIG_FILE, overrides)
    models = load_models(config.model, resolve_device(device, "--device"))
    explainer = build_explainer(models, config.model, config.train.seed)
    state = torch.load(directory / HEAD_FILE, map_location=models.device, weights_only=True)
    try:
        missing, unexpected = explainer.head.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise UserError(f"{directory / HEAD_FILE} does not fit the head of its config: {error}") from None
    if set(missing) == {"target_counts", "subset_counts"} and not unexpected:
        raise UserError(f"{directory / HEAD_FILE} predates class-coverage counts, so its trained classes are "
                        f"unknown; retrain it: python -m pipeline.train --config {directory / CONFIG_FILE}")
    if missing or unexpected:
        raise UserError(f"{directory / HEAD_FILE} does not fit the head of its config: missing {missing}, "
                        f"unexpected {unexpected}")
    explainer.head.eval()
    return explainer, config


def coverage_line(coverage: ClassCoverage) -> str:
    """One console line on how many classes have trained maps."""
    counts = coverage.summary()
    return (f"class coverage: {counts['classes_trained']} of {counts['num_classes']} classes were explained at least "
            f"{counts['min_count']} times in training; maps of the other classes are untrained, not explanations")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__.splitlines()[0])
    cli.add_config_arguments(parser)
    parser.add_argument("--out", type=Path, help="output folder (default: runs/<name>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    config = configs.load(experiment_file(args.experiment) if args.experiment else None, args.overrides)
    out = args.out or Path("runs") / config.name
    print(f"training a P-TAME head: backbone {config.model.backbone}, auxiliary {config.model.auxiliary}, "
          f"λ1={config.loss.lambda1:g} λ2={config.loss.lambda2:g} λ3={config.loss.variation_weight:g} "
          f"λ_area={config.loss.lambda_area:g}, {config.loss.describe()}")
    trained = train_head(config, progress=not args.no_progress)
    save_head(trained, out)
    summary = trained.summary
    print(f"trained {summary.steps} steps ({summary.images} images) in {summary.seconds:.1f} s, "
          f"final loss {summary.last.get('loss', float('nan')):.4f}; wrote {out}/{HEAD_FILE} and {out}/{CONFIG_FILE}")
    print(coverage_line(trained.coverage))
    return 0


if __name__ == "__main__":
    cli.run(main)
