"""Whether the images a command scores are held out from a trained model, by the model's split record.

`evaluate`, `compare` and `sanity` check the images of ``--split`` or ``--images`` against the ``splits.json``
of each head (or CA-Stream) folder they load: a split whose images changed since training is refused (unless
``--allow-changed-split``), and images the model trained or was selected on are refused (unless ``--allow-seen``,
and then every output marks the scores as seen).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset, Subset

from pipeline.data.manifest import SplitRecord, changes, seen_images, split_entries
from pipeline.data.sources import dataset_size, files_of
from pipeline.errors import UserError

# What a model chose or learnt on, by the split scored: the test split must be new to training and selection,
# the validation split (the selection set itself) to training.
LEARNT_ON = {"test": ("train", "val"), "val": ("train",), "images": ("train", "val")}


@dataclass
class HeldOut:
    """The outcome of the checks for one scored set of images: how many the models had seen, and which models'
    records were missing (unchecked)."""

    images: int
    seen: int = 0
    changed: list[str] | None = None
    unchecked: list[str] | None = None

    @property
    def note(self) -> str | None:
        """One line for outputs whose scores are not on held-out images, or None."""
        parts = []
        if self.seen:
            parts.append(
                f"SEEN: {self.seen} of {self.images} scored images were trained or selected on "
                "(--allow-seen); these are not held-out scores"
            )
        if self.changed:
            parts.append(f"the split changed since training ({'; '.join(self.changed)}; --allow-changed-split)")
        if self.unchecked:
            parts.append(f"not checked: {', '.join(self.unchecked)} has no splits.json (trained before split records)")
        return "; ".join(parts) or None

    def to_json(self) -> dict:
        return {
            "images": self.images,
            "seen_images": self.seen,
            "held_out": self.seen == 0,
            "split_changes": self.changed or [],
            "unchecked": self.unchecked or [],
        }


def _limited(dataset: Dataset) -> bool:
    """Whether ``dataset`` is the first images of a split (``--limit``)."""
    return isinstance(dataset, Subset) and isinstance(dataset.indices, range) and dataset.indices.start == 0


def check_held_out(
    folders: Sequence[Path], dataset: Dataset, split: str | None, allow_changed: bool = False, allow_seen: bool = False
) -> HeldOut:
    """Check ``dataset`` (the config's ``split``, or hand-given images when ``split`` is None) against the split
    record of each model folder; a refusal is a UserError naming the folder, what changed or was seen, and the
    flag that accepts it."""
    outcome = HeldOut(dataset_size(dataset))
    learnt_on = LEARNT_ON[split or "images"]
    for folder in folders:
        record = SplitRecord.read(folder)
        if record is None:
            outcome.unchecked = [*(outcome.unchecked or []), str(folder)]
            continue
        if split is not None:
            current = split_entries(dataset)
            change = changes(record.splits[split], current, part=_limited(dataset))
            if change is not None:
                if not allow_changed:
                    raise UserError(
                        f"the {split} split changed since {folder} was trained: {change}; its scores "
                        "would not be comparable; pass --allow-changed-split to score it anyway"
                    )
                outcome.changed = [*(outcome.changed or []), f"{folder}: {change}"]
            known = record.digests(learnt_on)
            seen = [entry["source"] for entry in current if entry["sha256"] in known]
        else:
            files = files_of(dataset)
            seen = [str(path) for path in seen_images(record, files.paths if files else [], learnt_on)]
        if seen:
            if not allow_seen:
                raise UserError(
                    f"{len(seen)} of the {dataset_size(dataset)} images to score were trained or selected on by "
                    f"{folder} (first: {seen[0]}); pass --allow-seen to score them anyway (the scores are "
                    "then marked seen)"
                )
            outcome.seen = max(outcome.seen, len(seen))
    return outcome
