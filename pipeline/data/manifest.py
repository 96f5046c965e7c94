"""What each split holds, recorded as ``splits.json`` in every head and search folder, and the checks it allows.

An entry is ``{"source": ..., "sha256": ...}``: for image files the path relative to the data folder (an absolute
path for images given by hand) and the SHA-256 of the file's bytes; for the demo the photo's name and the SHA-256 of
its pixels (`pixel_digest`). ImageNet's training split is one entry for the whole ``train/`` folder (its file count
as source, the SHA-256 of the sorted paths): hashing its 1.28 M files would read 140 GB. The record also holds one
``digest`` of all entries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from pipeline.data.sources import DemoViews, ImageFiles, Splits, files_of, read_image
from pipeline.errors import UserError

SPLITS_FILE = "splits.json"
SPLIT_NAMES = ("train", "val", "test")
LARGE_FOLDER = 100_000  # training folders with more files are recorded as one entry (ImageNet's train/)
Entry = dict[str, Any]


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pixel_digest(pixels: np.ndarray) -> str:
    """SHA-256 of an RGB uint8 image's shape and pixels: the same photo decoded from any lossless file."""
    array = np.ascontiguousarray(pixels, dtype=np.uint8)
    return hashlib.sha256(repr(array.shape).encode() + array.tobytes()).hexdigest()


def _relative(files: ImageFiles, path: Path) -> str:
    return (path.relative_to(files.root) if files.root is not None else path).as_posix()


def _demo_entries(dataset: Dataset) -> list[Entry] | None:
    """The photos a demo split (or the first views of one) shows, or None for other data."""
    views, indices = dataset, None
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, DemoViews):
        views, indices = dataset.dataset, list(dataset.indices)
    if not isinstance(views, DemoViews):
        return None
    shown = sorted({views.photo_of(i) for i in (indices if indices is not None else range(len(views)))})
    return [{"source": views.names[p], "sha256": pixel_digest(views.photos[p].permute(1, 2, 0).numpy())} for p in shown]


def split_entries(dataset: Dataset) -> list[Entry]:
    """The entries of a split, in its order."""
    demo = _demo_entries(dataset)
    if demo is not None:
        return demo
    files = files_of(dataset)
    if files is None:
        raise TypeError(f"cannot record the images of {type(dataset).__name__}")
    if len(files) > LARGE_FOLDER:
        names = "\n".join(sorted(_relative(files, path) for path in files.paths))
        return [{"source": f"{files.root}: {len(files)} files", "sha256": hashlib.sha256(names.encode()).hexdigest()}]
    return [{"source": _relative(files, path), "sha256": file_digest(path)} for path in files.paths]


@dataclass(frozen=True)
class SplitRecord:
    """The entries of ``train``, ``val`` and ``test``."""

    splits: dict[str, list[Entry]]

    @classmethod
    def of(cls, splits: Splits) -> SplitRecord:
        return cls({name: split_entries(getattr(splits, name)) for name in SPLIT_NAMES})

    @property
    def digest(self) -> str:
        """SHA-256 of every entry of every split."""
        return hashlib.sha256(json.dumps(self.splits, sort_keys=True).encode()).hexdigest()

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / SPLITS_FILE
        path.write_text(json.dumps({"digest": self.digest, **self.splits}, indent=1))
        return path

    @classmethod
    def read(cls, directory: str | Path) -> SplitRecord | None:
        """The record in ``directory``, or None where there is none (a head trained before records existed)."""
        path = Path(directory) / SPLITS_FILE
        if not path.is_file():
            return None
        try:
            values = json.loads(path.read_text())
            return cls({name: list(values[name]) for name in SPLIT_NAMES})
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"{path} is not a split record ({error}); restore it or retrain the head") from None

    def digests(self, names: Sequence[str]) -> set[str]:
        return {entry["sha256"] for name in names for entry in self.splits[name]}


def changes(recorded: list[Entry], current: list[Entry], part: bool = False) -> str | None:
    """What differs between a recorded split and its images now, in words ("2 added (first: a.png), 1 removed
    (first: b.png)"), or None; with ``part`` (only some of the split scored) images missing now are no change."""
    key = lambda entry: json.dumps(entry, sort_keys=True)  # noqa: E731
    before, now = {key(e) for e in recorded}, {key(e) for e in current}
    added = [e for e in current if key(e) not in before]
    removed = [] if part else [e for e in recorded if key(e) not in now]
    words = [
        f"{len(found)} {what} (first: {found[0]['source']})"
        for what, found in (("added", added), ("removed", removed))
        if found
    ]
    return ", ".join(words) or None


def image_digests(path: Path) -> set[str]:
    """The digests a hand-given image can match a record by: its file's and its pixels'."""
    return {file_digest(path), pixel_digest(np.array(read_image(path)))}


def seen_images(record: SplitRecord, paths: Sequence[Path], splits: Sequence[str] = ("train", "val")) -> list[Path]:
    """The ``paths`` whose file or pixels are in the record's ``splits``."""
    known = record.digests(splits)
    return [path for path in paths if image_digests(path) & known]
