"""One trial's work at paper scale, part by part, side by side in one run (images per second).

    python tests/benchmarks/gpu_trial.py [--images N] [--backbone vgg16] [--auxiliary resnet18] [--batch 64]

Writes an ImageNet-shaped folder of 500x375 JPEGs (among them one PNG behind a ``.JPEG`` name, one CMYK
and one grayscale JPEG), then measures:

- the data path alone: PIL + the train transform in loader workers, against workers that read bytes and
  the GPU decoding and augmenting them (`pipeline.data.batches.DeviceBatches`);
- the step on a batch already on the device: the bare unavoidable work (clean forward, auxiliary
  forward, masked forward/backward), the P-TAME step eager and with the classifier compiled (interleaved);
- ``train_head`` end to end on the folder with the defaults (``data.decode``/``train.compile`` auto);
- ROAD (both orders, the seven default percentages) on the device, as seconds per 2,000 images.

Without a GPU it runs the CPU rows with the offline EfficientNet-Lite models and says which GPU rows it
skipped (exit 0). Weights are random by default (timing does not depend on them; ``--weights library``
loads the library's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script from anywhere

from pipeline import config as configs  # noqa: E402
from pipeline.config import EvalConfig, LossConfig, ModelConfig  # noqa: E402
from pipeline.data.batches import DeviceBatches
from pipeline.data.sources import image_folder, train_transform
from pipeline.metrics.road import RoadProtocol, road  # noqa: E402
from pipeline.models.loading import build_explainer, load_models
from pipeline.training.compiled import CompiledNetwork  # noqa: E402
from pipeline.training.head_training import Workbench, train_head
from pipeline.training.loop import optimisation_step  # noqa: E402
from tests.benchmarks.train_step import bare_work  # noqa: E402

DISTINCT = 64  # distinct photos; the folder repeats their files
CLASSES = 16
ROAD_PER = 2000


def synthetic_photo(seed: int) -> Image.Image:
    """A 500x375 photo-like image: smooth colour fields with fine noise (JPEG sizes like ImageNet's)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, 6, 8))).float()
    smooth = F.interpolate(coarse, size=(375, 500), mode="bicubic", align_corners=False)[0]
    pixels = (smooth.permute(1, 2, 0).numpy() * 200 + rng.normal(0, 12, (375, 500, 3))).clip(0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def _encode(seed: int, folder: str) -> list[str]:
    path = Path(folder) / f"photo_{seed}.JPEG"
    image = synthetic_photo(seed)
    if seed == 0:
        image.save(path, "PNG")  # PNG content behind a .JPEG name, as ImageNet's n02105855_2933.JPEG
    elif seed == 1:
        image.convert("CMYK").save(path, "JPEG", quality=90)
    elif seed == 2:
        image.convert("L").save(path, "JPEG", quality=90)
    else:
        image.save(path, "JPEG", quality=90)
    return [str(path)]


def write_folder(root: Path, count: int) -> Path:
    """``root/train/<class>/*.JPEG`` (``count`` files) and a small ``root/val``."""
    sources = root / "sources"
    sources.mkdir(parents=True)
    with ProcessPoolExecutor() as pool:
        files = [Path(p) for paths in pool.map(_encode, range(DISTINCT), [str(sources)] * DISTINCT) for p in paths]
    contents = [f.read_bytes() for f in sorted(files, key=lambda f: int(f.stem.split("_")[1]))]
    for split, total in (("train", count), ("val", 2 * CLASSES)):
        for index in range(total):
            folder = root / split / f"n{index % CLASSES:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{split}_{index}.JPEG").write_bytes(contents[index % DISTINCT])
    return root


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(batches, device: torch.device) -> float:
    """Iterate ``batches`` to the device once; images per second."""
    started, count = time.perf_counter(), 0
    for images, _labels in batches:
        images = images.to(device, non_blocking=True)
        count += images.shape[0]
    synchronize(device)
    return count / (time.perf_counter() - started)


def model_config(args) -> ModelConfig:
    """The benchmarked backbone and auxiliary, with random weights unless ``--weights library``."""
    weights = None if args.weights == "library" else "random"
    return ModelConfig(
        backbone=args.backbone, backbone_weights=weights, auxiliary=args.auxiliary, auxiliary_weights=weights
    )


def step_rates(args, device: torch.device) -> tuple[dict[str, float], float]:
    """Median images/s of the bare work and the steps (interleaved), and the compile seconds."""
    model = model_config(args)
    models = load_models(model, device)
    explainer = build_explainer(models, model, seed=0)
    explainer.head.train()
    size = models.classifier.preprocessing.input_size
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    images = torch.rand(args.batch, 3, size, size, device=device).contiguous(memory_format=layout)
    optimizer = torch.optim.AdamW(explainer.head.parameters(), lr=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    loss = LossConfig()
    runs = {"bare work": lambda: bare_work(explainer, images, autocast)}
    runs["P-TAME step, eager"] = lambda: optimisation_step(explainer, images, loss, optimizer, None, autocast, 1e4, 0)
    compiled = None
    if device.type == "cuda":
        compiled = CompiledNetwork(explainer.classifier, args.batch)
        runs["P-TAME step, classifier compiled"] = lambda: optimisation_step(
            explainer, images, loss, optimizer, None, autocast, 1e4, 0, compiled
        )
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up (and compilation)
        run()
    for _ in range(args.repeats):
        for name, run in runs.items():
            synchronize(device)
            started = time.perf_counter()
            run()
            synchronize(device)
            seconds[name].append(time.perf_counter() - started)
    rates = {name: args.batch / statistics.median(values) for name, values in seconds.items()}
    return rates, compiled.compile_seconds if compiled else 0.0


def end_to_end(args, root: Path, device: torch.device) -> tuple[float, float, float]:
    """``train_head`` on the folder with the default settings: images/s, images/s after compiling, compile s."""
    config = configs.from_dict(
        {
            "model": asdict(model_config(args)),
            "data": {"dataset": "folder", "root": str(root), "num_workers": args.workers},
            "train": {"batch_size": args.batch, "device": str(device)},
        }
    )
    trained = train_head(config, Workbench.load(config), progress=False)
    summary = trained.summary
    steady = summary.seconds - summary.compile_seconds
    return summary.images / summary.seconds, summary.images / steady, summary.compile_seconds


def road_seconds(args, device: torch.device) -> tuple[float, int]:
    """Seconds of ROAD per 2,000 images (measured on ``--road-images``, scaled) with smooth random maps."""
    models = load_models(model_config(args), device)
    size = models.classifier.preprocessing.input_size
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.road_images, 3, size, size, generator=generator).to(device)
    coarse = torch.rand(args.road_images, 1, 7, 7, generator=generator)
    maps = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0].to(device)
    settings = EvalConfig()
    with torch.no_grad():
        targets = torch.cat([models.classifier(batch).argmax(1) for batch in images.split(settings.batch_size)])
    synchronize(device)
    started = time.perf_counter()
    road(
        models.classifier,
        images,
        maps,
        targets,
        RoadProtocol.of(settings),
        settings.batch_size,
        torch.Generator(device=device).manual_seed(0),
    )
    synchronize(device)
    return (time.perf_counter() - started) * ROAD_PER / args.road_images, args.road_images


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16384 if cuda else 256, help="training JPEGs to write")
    parser.add_argument("--backbone", default="vgg16" if cuda else "efficientnet_lite0")
    parser.add_argument("--auxiliary", default="resnet18" if cuda else "efficientnet_lite1")
    parser.add_argument("--batch", type=int, default=64 if cuda else 16)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=20 if cuda else 3, help="timed steps per step variant")
    parser.add_argument("--road-images", type=int, default=ROAD_PER if cuda else 32)
    parser.add_argument("--weights", choices=("random", "library"), default="random")
    parser.add_argument("--folder", type=Path, help="reuse a folder written by an earlier run")
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"{name}: {args.backbone} + {args.auxiliary} auxiliary, batch {args.batch}, {args.workers} loader workers, "
        f"{args.images} training JPEGs (500x375), torch {torch.__version__}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        root = args.folder or write_folder(Path(scratch), args.images)
        files = image_folder(root / "train", train_transform(224))
        rows: list[tuple[str, str]] = []
        pil = DataLoader(files, batch_size=args.batch, shuffle=True, num_workers=args.workers, pin_memory=cuda)
        cpu_rate = images_per_second(pil, device)
        rows.append(("data: PIL + train transform in workers", f"{cpu_rate:8.0f} img/s"))
        on_device = DeviceBatches(files, args.batch, 224, device, seed=0, num_workers=args.workers)
        device_rate = images_per_second(on_device, device)
        where = "GPU decode + augment (workers read bytes)" if cuda else "device path on the CPU (main process)"
        rows.append((f"data: {where}", f"{device_rate:8.0f} img/s  ({device_rate / cpu_rate:.2f}x the PIL loader)"))
        rates, compile_seconds = step_rates(args, device)
        bare = rates["bare work"]
        for label, rate in rates.items():
            rows.append((f"step: {label}", f"{rate:8.0f} img/s  ({rate / bare:.2f}x bare work)"))
        if cuda:
            rows.append(("step: compile (first calls, both graphs)", f"{compile_seconds:8.1f} s"))
        overall, steady, compile_total = end_to_end(args, root, device)
        rows.append(
            (
                "train_head end to end (training.json)",
                f"{overall:8.0f} img/s  ({steady:.0f} img/s without {compile_total:.1f} s compile)",
            )
        )
        seconds, measured = road_seconds(args, device)
        scaled = "" if measured == ROAD_PER else f" (measured on {measured}, scaled)"
        rows.append(("ROAD, both orders, 7 percentages", f"{seconds:8.1f} s per {ROAD_PER} images{scaled}"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    if not cuda:
        print(
            "GPU rows skipped (no CUDA device): GPU decode, the compiled step and their end-to-end and ROAD "
            "figures on the GPU"
        )


if __name__ == "__main__":
    main()
