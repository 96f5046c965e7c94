"""Benchmark: batched `noisy_linear_impute` against a per-image scipy sparse direct solve.

Bundled photos (skimage, sklearn) with random crops and flips, MoRF masks from smooth maps at the
seven default ROAD percentages. Run: python tests/benchmarks/road_imputation.py [--batch 32]

``--launches`` instead counts the torch ops the imputer dispatches per image system (each one a
kernel launch on a GPU, where small ops cost their launch whatever their size) for ROAD's chunks
as a GPU plans them (64 images in one piece) and as it planned them before (8 images in pieces of
8 x the CPU's). This needs no GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F
from skimage import data as skdata
from sklearn.datasets import load_sample_images

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script from anywhere

from torch.utils._python_dispatch import TorchDispatchMode

from pipeline.metrics import imputation, road
from pipeline.metrics.imputation import noisy_linear_impute
from pipeline.metrics.road import ORDERS, removal_masks

PERCENTAGES = (10, 20, 30, 40, 50, 70, 90)
OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def photos() -> list[torch.Tensor]:
    """The bundled photos as float [3, H, W] tensors in [0, 1]."""
    arrays = [skdata.chelsea(), skdata.coffee(), skdata.rocket(), skdata.astronaut(), skdata.stereo_motorcycle()[0]]
    arrays.append(np.repeat(skdata.camera()[..., None], 3, axis=2))
    arrays.extend(load_sample_images().images)
    return [torch.from_numpy(np.array(a[..., :3])).permute(2, 0, 1).float() / 255 for a in arrays]


def make_batch(batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random crops (after a random rescale) and flips of the photos."""
    sources = photos()
    crops = []
    for index in range(batch):
        photo = sources[index % len(sources)]
        scale = (size + torch.randint(0, size // 2, (1,), generator=generator).item()) / min(photo.shape[1:])
        resized = F.interpolate(photo[None], scale_factor=scale, mode="bilinear", antialias=True)[0]
        top = torch.randint(0, resized.shape[1] - size + 1, (1,), generator=generator).item()
        left = torch.randint(0, resized.shape[2] - size + 1, (1,), generator=generator).item()
        crop = resized[:, top : top + size, left : left + size]
        if torch.rand(1, generator=generator).item() < 0.5:
            crop = crop.flip(-1)
        crops.append(crop.clamp(0, 1))
    return torch.stack(crops)


def smooth_maps(batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """A Gaussian blob at a random place plus blurred noise, per image."""
    grid = torch.linspace(0, 1, size)
    centers = torch.rand(batch, 2, generator=generator)
    widths = 0.1 + 0.2 * torch.rand(batch, 1, 1, generator=generator)
    rows = (grid[None, :, None] - centers[:, 0, None, None]) ** 2
    distance = rows + (grid[None, None, :] - centers[:, 1, None, None]) ** 2
    blob = torch.exp(-distance / (2 * widths**2))
    noise = F.interpolate(torch.rand(batch, 1, 7, 7, generator=generator), size=(size, size), mode="bicubic")[:, 0]
    return blob + 0.3 * noise


def scipy_impute(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Exact noise-free solve of one image [C, H, W] (float64) with a coo-built system and spsolve."""
    height, width = removed.shape
    index = np.full((height, width), -1)
    rows, cols = np.nonzero(removed)
    index[rows, cols] = np.arange(rows.size)
    diagonal = np.zeros(rows.size)
    rhs = np.zeros((rows.size, image.shape[0]))
    entries_i, entries_j, entries_w = [], [], []
    for dy, dx in OFFSETS:
        weight = 1 / 12 if dy and dx else 1 / 6
        ny, nx = rows + dy, cols + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        source, ny, nx = np.nonzero(inside)[0], ny[inside], nx[inside]
        diagonal[source] += weight
        neighbour = index[ny, nx]
        unknown = neighbour >= 0
        entries_i.append(source[unknown])
        entries_j.append(neighbour[unknown])
        entries_w.append(np.full(unknown.sum(), -weight))
        np.add.at(rhs, source[~unknown], weight * image[:, ny[~unknown], nx[~unknown]].T)
    all_rows = np.concatenate([*entries_i, np.arange(rows.size)])
    all_cols = np.concatenate([*entries_j, np.arange(rows.size)])
    all_values = np.concatenate([*entries_w, diagonal])
    matrix = scipy.sparse.coo_matrix((all_values, (all_rows, all_cols)), shape=(rows.size,) * 2).tocsc()
    solution = scipy.sparse.linalg.spsolve(matrix, rhs).reshape(rows.size, -1)
    out = image.copy()
    out[:, rows, cols] = solution.T
    return out


def time_batched(images: torch.Tensor, masks: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, float]:
    """noisy_linear_impute without noise on device; returns the result on the CPU and the wall time."""
    images, masks = images.to(device), masks.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = noisy_linear_impute(images, masks, noise=0.0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result.cpu(), time.perf_counter() - start


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def ops_per_system(images: torch.Tensor, maps: torch.Tensor, chunk_values: int) -> float:
    """Ops dispatched per image system when ROAD imputes all orders and percentages of ``images`` at once,
    the imputer cutting them into pieces of at most ``chunk_values`` values (one thread)."""
    masks = torch.stack([removal_masks(maps, p / 100, order) for order in ORDERS for p in PERCENTAGES])
    repeated = images.expand(masks.shape[0], *images.shape).flatten(0, 1)
    counter, solve_chunk = OpCounter(), imputation._solve_chunk

    def counted(*args) -> None:  # dispatch modes are per thread, and chunks run on a pool thread
        with counter:
            solve_chunk(*args)

    default, threads = imputation._CHUNK_VALUES, torch.get_num_threads()
    imputation._CHUNK_VALUES, imputation._solve_chunk = chunk_values, counted
    torch.set_num_threads(1)
    try:
        with counter:
            noisy_linear_impute(repeated, masks.flatten(0, 1), noise=0.0)
    finally:
        imputation._CHUNK_VALUES, imputation._solve_chunk = default, solve_chunk
        torch.set_num_threads(threads)
    return counter.count / repeated.shape[0]


def count_launches(size: int) -> None:
    """Print ops per image system for ROAD's chunks as a GPU plans them with and without free-memory sizing."""
    generator = torch.Generator().manual_seed(0)
    many = road._ACCELERATOR_IMAGES_PER_CHUNK
    images, maps = make_batch(many, size, generator), smooth_maps(many, size, generator)
    few, before = road._IMAGES_PER_CHUNK, 8 * imputation._CHUNK_VALUES  # the GPU plan before it was widened
    fixed = ops_per_system(images[:few], maps[:few], before)
    wide = ops_per_system(images, maps, imputation._ACCELERATOR_CHUNK_VALUES)
    print(
        f"ops per image system: {few} images per ROAD chunk in pieces of {before:,} values (the GPU plan before) "
        f"{fixed:.1f}; {many} images in pieces of {imputation._ACCELERATOR_CHUNK_VALUES:,} (now) {wide:.1f}; "
        f"ratio {wide / fixed:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--skip-scipy", action="store_true", help="time only the batched imputer")
    parser.add_argument("--launches", action="store_true", help="count ops per image system instead (no GPU needed)")
    args = parser.parse_args()
    if args.launches:
        count_launches(args.size)
        return
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    images = make_batch(args.batch, args.size, generator)
    maps = smooth_maps(args.batch, args.size, generator)
    print(
        f"{args.batch} images x {len(PERCENTAGES)} percentages, {args.size}x{args.size}, MoRF, {args.threads} threads"
    )
    time_batched(images[:2], removal_masks(maps[:2], 0.5, "morf"), device)  # warm-up

    # Interleaved per percentage so that both sides see the same machine load.
    scipy_time = batched_time = error = 0.0
    for percentage in PERCENTAGES:
        masks = removal_masks(maps, percentage / 100, "morf")
        batched, seconds = time_batched(images, masks, device)
        batched_time += seconds
        line = f"{percentage:3d}%: batched {seconds:6.2f} s"
        if not args.skip_scipy:
            start = time.perf_counter()
            exact = np.stack([scipy_impute(image.double().numpy(), mask.numpy()) for image, mask in zip(images, masks)])
            scipy_time += time.perf_counter() - start
            difference = (batched.double() - torch.from_numpy(exact)).abs().max().item()
            error = max(error, difference)
            line += f", scipy {time.perf_counter() - start:6.2f} s, max |diff| {difference:.1e}"
        print(line, flush=True)
    count = args.batch * len(PERCENTAGES)
    print(f"batched: {batched_time:.2f} s ({count / batched_time:.1f} imputations/s)")
    if not args.skip_scipy:
        print(
            f"scipy loop: {scipy_time:.2f} s, batched: {batched_time:.2f} s, "
            f"speed-up: {scipy_time / batched_time:.2f} x, max |diff|: {error:.2e}"
        )
    if device.type == "cuda":
        wide = make_batch(64, args.size, generator)
        wide_masks = removal_masks(smooth_maps(64, args.size, generator), 0.5, "morf")
        _, seconds = time_batched(wide, wide_masks, device)
        print(f"{device}: batch 64 at 50 % removed: {64 / seconds:.1f} images/s")


if __name__ == "__main__":
    main()
