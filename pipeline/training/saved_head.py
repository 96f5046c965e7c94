"""A trained head on disk: ``head.pt`` (the head's ``state_dict``, loads with ``weights_only=True``), its resolved
``config.yaml``, the training summary and class counts; and the explainer rebuilt from such a folder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from pipeline import config as configs
from pipeline.config import ExperimentConfig
from pipeline.errors import UserError
from pipeline.models.contributions import layer_contributions
from pipeline.models.device import resolve_device
from pipeline.models.explainer import Explainer
from pipeline.models.loading import build_explainer, load_models
from pipeline.training.head_training import TrainedHead

HEAD_FILE, CONFIG_FILE, SUMMARY_FILE, COUNTS_FILE = "head.pt", "config.yaml", "training.json", "class_counts.json"


def save_head(trained: TrainedHead, directory: str | Path) -> Path:
    """Write ``head.pt``, ``config.yaml``, ``training.json`` (with the layer contributions), ``class_counts.json``
    and, where the data is known, ``splits.json`` (`pipeline.data.manifest`) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # On the CPU, so that the file loads on any machine, whatever device trained the head.
    torch.save(
        {name: value.cpu() for name, value in trained.explainer.head.state_dict().items()}, directory / HEAD_FILE
    )
    configs.dump(trained.config, directory / CONFIG_FILE)
    summary = trained.summary
    contributions = layer_contributions(trained.explainer, trained.config.evaluation.min_class_count)
    (directory / SUMMARY_FILE).write_text(
        json.dumps(
            {
                "steps": summary.steps,
                "images": summary.images,
                "seconds": round(summary.seconds, 3),
                "images_per_second": round(summary.images_per_second, 1),
                "compile_seconds": round(summary.compile_seconds, 3),
                "reused_predictions": summary.reused_predictions,
                "last": summary.last,
                "class_coverage": trained.coverage.summary(),
                "contributions": [asdict(entry) for entry in contributions],
            },
            indent=2,
        )
    )
    (directory / COUNTS_FILE).write_text(json.dumps(trained.coverage.counts(), indent=1))
    if trained.split_record is not None:
        trained.split_record.write(directory)
    return directory


def load_explainer(
    directory: str | Path, device: str = "auto", overrides: Sequence[str] = (), fold: bool = True
) -> tuple[Explainer, ExperimentConfig]:
    """Rebuild a trained explainer from a directory written by ``save_head`` (``overrides`` as ``--set``) on
    ``device`` (``auto``: a CUDA device when there is one, whichever device trained the head); ``fold`` as in
    ``load_models`` (off to randomise the classifier's layers)."""
    directory = Path(directory)
    for name in (HEAD_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise UserError(f"{directory} has no {name}; pass a folder written by `python -m pipeline.train`")
    config = configs.load(directory / CONFIG_FILE, overrides)
    models = load_models(config.model, resolve_device(device, "--device"), fold)
    explainer = build_explainer(models, config.model, config.train.seed)
    state = torch.load(directory / HEAD_FILE, map_location=models.device, weights_only=True)
    try:
        missing, unexpected = explainer.head.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise UserError(f"{directory / HEAD_FILE} does not fit the head of its config: {error}") from None
    if set(missing) == {"target_counts", "subset_counts"} and not unexpected:
        raise UserError(
            f"{directory / HEAD_FILE} predates class-coverage counts, so its trained classes are "
            f"unknown; retrain it: python -m pipeline.train --config {directory / CONFIG_FILE}"
        )
    if missing or unexpected:
        raise UserError(
            f"{directory / HEAD_FILE} does not fit the head of its config: missing {missing}, unexpected {unexpected}"
        )
    explainer.head.eval()
    return explainer, config
