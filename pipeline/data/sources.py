"""Datasets: ImageNet / any ImageFolder, the fixed ImageNet validation/test index lists, and the offline demo.

Every dataset yields ``(image, label)`` with the image a float tensor ``[3, S, S]`` in [0, 1] pixel space at
the classifier's input size ``S``; networks normalise their own inputs.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2

from pipeline.config import DataConfig
from pipeline.errors import UserError
from pipeline.resources import DATALISTS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
IMAGENET_VAL_SIZE = 50_000
EVAL_SPLIT_CAP = 2000  # validation and test images drawn from a folder, each (the paper's lists hold 2000)
DATA_ROOTS = {"imagenet": "your ImageNet folder (with train/ and val/)", "folder": "your image folder"}


def train_transform(size: int) -> Callable:
    """ImageNet-style training views: resize to size/0.875, random crop, horizontal flip."""
    return v2.Compose([v2.ToImage(), v2.Resize(round(size / 0.875), antialias=True), v2.RandomCrop(size),
                       v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True)])


def eval_transform(size: int) -> Callable:
    """Evaluation views: resize to size/0.875, centre crop."""
    return v2.Compose([v2.ToImage(), v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size),
                       v2.ToDtype(torch.float32, scale=True)])


def read_image(path: Path, content: bytes | None = None) -> Image.Image:
    """Open an image (the file, or its ``content`` already read) as RGB, or raise a UserError naming the file."""
    try:
        with Image.open(path if content is None else io.BytesIO(content)) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UserError(f"cannot read image {str(path)!r} ({error}); remove or replace the file") from None


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageFiles(Dataset):
    """Image files with integer labels (``-1`` when unlabelled)."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform: Callable):
        self.paths, self.labels, self.transform = list(paths), list(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(read_image(self.paths[index])), self.labels[index]


def files_of(dataset: Dataset) -> ImageFiles | None:
    """The image files behind ``dataset`` (through any ``Subset``s, in their order), or None for in-memory data."""
    if isinstance(dataset, ImageFiles):
        return dataset
    if isinstance(dataset, Subset):
        inner = files_of(dataset.dataset)
        if inner is not None:
            picked = list(dataset.indices)
            return ImageFiles([inner.paths[i] for i in picked], [inner.labels[i] for i in picked], inner.transform)
    return None


def image_folder(root: Path, transform: Callable) -> ImageFiles:
    """torchvision's ImageFolder layout (``root/<class>/<image>``, classes sorted by name)."""
    if not root.is_dir():
        raise UserError(f"data folder {str(root)!r} does not exist; point data.root at your images")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = list_images(root / name)
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise UserError(
            f"no images found under {str(root)!r}; expected {root}/<class>/<image>.jpg "
            f"(suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return ImageFiles(paths, labels, transform)


def plain_images(paths: Sequence[str | Path], size: int) -> ImageFiles:
    """The user's own image files or folders of images, unlabelled, as evaluation views."""
    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            files += list_images(item)
        elif item.is_file():
            files.append(item)
        else:
            raise UserError(f"image path {str(item)!r} does not exist")
    if not files:
        raise UserError(f"no image files in {', '.join(map(str, paths))}")
    return ImageFiles(files, [-1] * len(files), eval_transform(size))


def demo_photos() -> dict[str, np.ndarray]:
    """The natural photos shipped inside scikit-image and scikit-learn (no download), as RGB uint8."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    left, right, _ = data.stereo_motorcycle()
    china, flower = load_sample_images().images
    camera = np.repeat(data.camera()[..., None], 3, axis=-1)
    return {"chelsea": data.chelsea(), "coffee": data.coffee(), "rocket": data.rocket(),
            "astronaut": data.astronaut(), "motorcycle_left": left, "motorcycle_right": right,
            "camera": camera, "china": china, "flower": flower}


class DemoViews(Dataset):
    """Views of the bundled photos: random resized crops and flips, fixed per (seed, index).

    ``random=False`` starts with one centre view of every photo, then random views of the same recipe.
    """

    def __init__(self, size: int, count: int, seed: int, random: bool = True):
        photos = demo_photos()
        self.names = list(photos)
        self.photos = [torch.from_numpy(np.array(p, copy=True)).permute(2, 0, 1) for p in photos.values()]
        self.count, self.seed, self.random, self.size = count, seed, random, size
        self.crop = v2.Compose([v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
                                v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True)])
        self.centre = eval_transform(size)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = index % len(self.photos)
        photo = self.photos[label]
        if not self.random and index < len(self.photos):
            return self.centre(photo), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + index)
            return self.crop(photo), label


def imagenet_index_list(split: str, lists: str = "project") -> list[int]:
    """Fixed, disjoint 2000-image lists over ImageNet's validation split: this project's (``imagenet_*.txt``)
    or the authors' (``reference_*.txt``, their ``datalists/{val,test}_set.pt``)."""
    prefix = "imagenet" if lists == "project" else "reference"
    return [int(line) for line in (DATALISTS / f"{prefix}_{split}.txt").read_text().split()]


def _limit(dataset: Dataset, limit: int | None) -> Dataset:
    return dataset if limit is None or limit >= len(dataset) else Subset(dataset, range(limit))


def _shuffled(count: int, seed: int) -> list[int]:
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()


def _split_evaluation(count: int, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint validation and test indices over a held-out folder: halves, at most EVAL_SPLIT_CAP each."""
    order = _shuffled(count, seed)
    half = min(count // 2, EVAL_SPLIT_CAP)
    return order[:half], order[half: 2 * half]


def _split_three_ways(count: int, seed: int) -> tuple[list[int], list[int], list[int]]:
    """Disjoint train / validation / test indices over one folder: a tenth each (at most EVAL_SPLIT_CAP, at
    least one image) for validation and test, the rest for training."""
    if count < 3:
        raise UserError(f"only {count} image(s): a folder without train/ and val/ needs at least 3 to split into "
                        "disjoint train, validation and test images")
    held_out = min(max(count // 10, 1), EVAL_SPLIT_CAP)
    order = _shuffled(count, seed)
    return order[2 * held_out:], order[:held_out], order[held_out: 2 * held_out]


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset


def build_splits(config: DataConfig, size: int) -> Splits:
    """Train/val/test datasets for ``config`` at input size ``size``, always disjoint in images:

    - ``imagenet``: ``train/`` for training; the fixed 2000/2000 index lists over ``val/``;
    - ``folder`` with ``train/`` and ``val/``: ``val/`` halved into validation and test (at most 2000 each);
    - ``folder`` without them: one folder split three ways (a tenth each for validation and test);
    - ``demo``: random crops of the bundled photos for training, other crops of the same photos for
      validation and test (so the demo shows the pipeline working, not generalisation).
    """
    if config.dataset == "demo":
        train = DemoViews(size, config.demo_train_views, seed=config.seed)
        val = DemoViews(size, config.demo_eval_views, seed=config.seed + 1, random=False)
        test = DemoViews(size, config.demo_eval_views, seed=config.seed + 2, random=False)
    else:
        root = Path(config.root).expanduser()
        if not root.is_dir():
            raise UserError(f"data.root {str(root)!r} does not exist; point it at {DATA_ROOTS[config.dataset]}")
        train_root, val_root = root / "train", root / "val"
        if config.dataset == "imagenet":
            if not (train_root.is_dir() and val_root.is_dir()):
                raise UserError(f"ImageNet layout expected: {root}/train/<wnid>/ and {root}/val/<wnid>/")
            train = image_folder(train_root, train_transform(size))
            evaluation = image_folder(val_root, eval_transform(size))
            if len(evaluation) != IMAGENET_VAL_SIZE:
                raise UserError(f"{val_root} holds {len(evaluation)} images, ImageNet's val split has 50000; "
                                "use data.dataset=folder for other image sets")
            val_indices = imagenet_index_list("val", config.index_lists)
            test_indices = imagenet_index_list("test", config.index_lists)
        elif train_root.is_dir() and val_root.is_dir():
            train = image_folder(train_root, train_transform(size))
            evaluation = image_folder(val_root, eval_transform(size))
            val_indices, test_indices = _split_evaluation(len(evaluation), config.seed)
        else:
            evaluation = image_folder(root, eval_transform(size))
            train_indices, val_indices, test_indices = _split_three_ways(len(evaluation), config.seed)
            train = Subset(ImageFiles(evaluation.paths, evaluation.labels, train_transform(size)), train_indices)
        val, test = Subset(evaluation, val_indices), Subset(evaluation, test_indices)
    return Splits(_limit(train, config.train_limit), _limit(val, config.val_limit), _limit(test, config.test_limit))


