"""Datasets: ImageNet / any ImageFolder, the fixed ImageNet validation/test index lists, and the offline demo.

Every dataset yields ``(image, label)`` with the image a float tensor ``[3, S, S]`` in [0, 1] pixel space at
the classifier's input size ``S``; networks normalise their own inputs.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pipeline.config import DataConfig
from pipeline.errors import UserError
from pipeline.resources import DATALISTS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
IMAGENET_VAL_SIZE = 50_000
EVAL_SPLIT_CAP = 2000  # validation and test images used from a folder, each (the paper's lists hold 2000)
DATA_ROOTS = {"imagenet": "your ImageNet folder (with train/ and val/)", "folder": "your image folder"}


def train_transform(size: int) -> Callable:
    """ImageNet-style training views: resize to size/0.875, random crop, horizontal flip."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(round(size / 0.875), antialias=True),
            v2.RandomCrop(size),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def eval_transform(size: int) -> Callable:
    """Evaluation views: resize to size/0.875, centre crop."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(round(size / 0.875), antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


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
    """Image files with integer labels (``-1`` when unlabelled); ``root``, when given, is the folder their split
    records name them relative to."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform: Callable, root: Path | None = None):
        self.paths, self.labels, self.transform, self.root = list(paths), list(labels), transform, root

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
            return ImageFiles(
                [inner.paths[i] for i in picked], [inner.labels[i] for i in picked], inner.transform, inner.root
            )
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
    return ImageFiles(paths, labels, transform, root)


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
    """The natural photos shipped inside scikit-image, scikit-learn and matplotlib (no download), as RGB uint8."""
    import matplotlib.cbook
    from skimage import data
    from sklearn.datasets import load_sample_images

    left, right, _ = data.stereo_motorcycle()
    china, flower = load_sample_images().images
    camera = np.repeat(data.camera()[..., None], 3, axis=-1)
    with cast(IO[bytes], matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as file:  # a .jpg: a file, no array
        hopper = np.array(Image.open(file).convert("RGB"))
    return {
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        "astronaut": data.astronaut(),
        "motorcycle_left": left,
        "motorcycle_right": right,
        "camera": camera,
        "china": china,
        "flower": flower,
        "grace_hopper": hopper,
    }


# The demo's photos by split: no photo is in two splits. Only the stereo pair of motorbike photos shares a class, so
# one trains and the other validates, and the search selects on maps of a trained class; the test photos show
# classes no training photo shows (docs/data.md gives the evidence and the coverage).
DEMO_SPLITS = {
    "train": ("chelsea", "coffee", "rocket", "astronaut", "motorcycle_left", "camera", "china"),
    "val": ("motorcycle_right",),
    "test": ("flower", "grace_hopper"),
}


class DemoViews(Dataset):
    """Views of some of the bundled photos: random resized crops and flips, fixed per (seed, index), made once and
    kept (as uint8). View ``i`` shows photo ``i % len(photos)``; ``random=False`` starts with one centre view of
    every photo, then random views of the same recipe. Labels index the photos' order in `demo_photos`."""

    def __init__(self, size: int, count: int, seed: int, random: bool = True, photos: Sequence[str] | None = None):
        everything = demo_photos()
        names = list(everything) if photos is None else list(photos)
        unknown = [name for name in names if name not in everything]
        if unknown or not names:
            raise ValueError(f"demo photos {unknown or '(none)'}: choose from {', '.join(everything)}")
        self.names = names
        self.photos = [torch.from_numpy(np.array(everything[name], copy=True)).permute(2, 0, 1) for name in names]
        self.photo_labels = [list(everything).index(name) for name in names]
        self.count, self.seed, self.random, self.size = count, seed, random, size
        self.crop = v2.Compose(
            [v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        )
        self.centre = v2.Compose([v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)])
        self._views: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.count

    def photo_of(self, index: int) -> int:
        """Which of this dataset's photos view ``index`` shows."""
        return index % len(self.photos)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        photo = self.photo_of(index)
        if index not in self._views:
            if not self.random and index < len(self.photos):
                self._views[index] = self.centre(self.photos[photo])
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.seed * 1_000_003 + index)
                    self._views[index] = self.crop(self.photos[photo])
        return TF.to_dtype(self._views[index], torch.float32, scale=True), self.photo_labels[photo]


def imagenet_index_list(split: str, lists: str = "project") -> list[int]:
    """Fixed, disjoint 2000-image lists over ImageNet's validation split: this project's (``imagenet_*.txt``)
    or the authors' (``reference_*.txt``, their ``datalists/{val,test}_set.pt``)."""
    prefix = "imagenet" if lists == "project" else "reference"
    return [int(line) for line in (DATALISTS / f"{prefix}_{split}.txt").read_text().split()]


def dataset_size(dataset: Dataset) -> int:
    """``len(dataset)``: torch's ``Dataset`` declares no ``__len__``, though every dataset of the pipeline has one."""
    return len(cast(Sized, dataset))


def _limit(dataset: Dataset, limit: int | None) -> Dataset:
    return dataset if limit is None or limit >= dataset_size(dataset) else Subset(dataset, range(limit))


def path_share(relative: str, seed: int) -> float:
    """A file's place in [0, 1): the SHA-256 of ``seed`` and its path relative to the data root. It decides the
    file's split, so adding or removing other files never moves it."""
    digest = hashlib.sha256(f"{seed}:{relative}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _relative(files: ImageFiles, index: int) -> str:
    path = files.paths[index]
    return (path.relative_to(files.root) if files.root is not None else path).as_posix()


def _by_share(files: ImageFiles, seed: int) -> list[tuple[float, int]]:
    return sorted((path_share(_relative(files, index), seed), index) for index in range(len(files)))


def _capped(shares: list[tuple[float, int]]) -> list[int]:
    """Indices in share order, at most EVAL_SPLIT_CAP (the files with the smallest shares)."""
    return [index for _, index in shares[:EVAL_SPLIT_CAP]]


def _split_evaluation(files: ImageFiles, seed: int) -> tuple[list[int], list[int]]:
    """Validation and test indices over a held-out folder (``val/``): share below one half, the rest; at most
    EVAL_SPLIT_CAP each."""
    shares = _by_share(files, seed)
    val = [item for item in shares if item[0] < 0.5]
    test = [item for item in shares if item[0] >= 0.5]
    if not val or not test:
        raise UserError(
            f"{files.root}: the {len(files)} image(s) of val/ all fall into one of validation and test "
            f"(split by a hash of each path with data.seed {seed}); add images to val/ (about 10 or "
            "more almost always give each split one) or change data.seed"
        )
    return _capped(val), _capped(test)


def _split_three_ways(files: ImageFiles, seed: int, holdout: float) -> tuple[list[int], list[int], list[int]]:
    """Train / validation / test indices over one folder: a file whose share is below ``holdout`` validates, below
    twice that tests, the rest trains; at most EVAL_SPLIT_CAP each for validation and test (the files beyond the
    cap are used by none)."""
    shares = _by_share(files, seed)
    val = [item for item in shares if item[0] < holdout]
    test = [item for item in shares if holdout <= item[0] < 2 * holdout]
    train = sorted(index for share, index in shares if share >= 2 * holdout)
    empty = [name for name, split in (("training", train), ("validation", val), ("test", test)) if not split]
    if empty:
        needed = max(3, round(3 / holdout))
        raise UserError(
            f"{files.root}: {len(files)} image(s) give no {' and no '.join(empty)} image (each file's "
            f"split is a hash of its path with data.seed {seed}, {holdout:.0%} each for validation and "
            f"test); give about {needed} or more images, raise data.holdout, or use train/ and val/ "
            "subfolders"
        )
    return train, _capped(val), _capped(test)


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset


def build_splits(config: DataConfig, size: int) -> Splits:
    """Train/val/test datasets for ``config`` at input size ``size``, always disjoint in images:

    - ``imagenet``: ``train/`` for training; the fixed 2000/2000 index lists over ``val/``;
    - ``folder`` with ``train/`` and ``val/``: ``val/`` split into validation and test by a hash of each path;
    - ``folder`` without them: one folder split three ways by a hash of each path (``data.holdout`` each for
      validation and test);
    - ``demo``: crops of the bundled photos, each photo in one split only (DEMO_SPLITS).
    """
    train: Dataset
    val: Dataset
    test: Dataset
    if config.dataset == "demo":
        train = DemoViews(size, config.demo_train_views, seed=config.seed, photos=DEMO_SPLITS["train"])
        val = DemoViews(size, config.demo_eval_views, seed=config.seed + 1, random=False, photos=DEMO_SPLITS["val"])
        test = DemoViews(size, config.demo_eval_views, seed=config.seed + 2, random=False, photos=DEMO_SPLITS["test"])
    else:
        assert config.root is not None  # DataConfig's validator requires it for every dataset but the demo
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
                raise UserError(
                    f"{val_root} holds {len(evaluation)} images, ImageNet's val split has 50000; "
                    "use data.dataset=folder for other image sets"
                )
            val_indices = imagenet_index_list("val", config.index_lists)
            test_indices = imagenet_index_list("test", config.index_lists)
        elif train_root.is_dir() and val_root.is_dir():
            train = image_folder(train_root, train_transform(size))
            evaluation = image_folder(val_root, eval_transform(size))
            val_indices, test_indices = _split_evaluation(evaluation, config.seed)
        else:
            evaluation = image_folder(root, eval_transform(size))
            train_indices, val_indices, test_indices = _split_three_ways(evaluation, config.seed, config.holdout)
            train = Subset(ImageFiles(evaluation.paths, evaluation.labels, train_transform(size), root), train_indices)
        val, test = Subset(evaluation, val_indices), Subset(evaluation, test_indices)
    return Splits(_limit(train, config.train_limit), _limit(val, config.val_limit), _limit(test, config.test_limit))
