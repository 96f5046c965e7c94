"""Noisy linear imputation against an exact scipy solve of the same sparse system."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F
from skimage import data as skdata

from pipeline.metrics import imputation
from pipeline.metrics.imputation import FILL_VALUE, noisy_linear_impute
from pipeline.metrics.road import removal_masks

SIDE, DIAGONAL = 1 / 6, 1 / 12


pytestmark = pytest.mark.usefixtures("single_thread")


def exact_impute(image: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Oracle: each removed pixel = weighted mean of in-bounds neighbours, one sparse direct solve."""
    pixels, mask = image.double().numpy(), removed.numpy()
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    index = -np.ones(mask.shape, dtype=np.int64)
    index[ys, xs] = np.arange(ys.size)
    diagonal = np.zeros(ys.size)
    rhs = np.zeros((ys.size, pixels.shape[0]))
    rows, cols, values = [np.arange(ys.size)], [np.arange(ys.size)], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            weight = DIAGONAL if dy and dx else SIDE
            ny, nx = ys + dy, xs + dx
            inside = np.nonzero((ny >= 0) & (ny < height) & (nx >= 0) & (nx < width))[0]
            diagonal[inside] += weight
            neighbour = index[ny[inside], nx[inside]]
            missing = neighbour >= 0
            rows.append(inside[missing]), cols.append(neighbour[missing])
            values.append(np.full(missing.sum(), -weight))
            known = inside[~missing]
            rhs[known] += weight * pixels[:, ny[known], nx[known]].T
    matrix = scipy.sparse.csc_matrix(
        (np.concatenate([diagonal, *values]), (np.concatenate(rows), np.concatenate(cols))), shape=(ys.size,) * 2
    )
    solution = scipy.sparse.linalg.spsolve(matrix, rhs).reshape(ys.size, -1)
    out = pixels.copy()
    out[:, ys, xs] = solution.T
    return torch.from_numpy(out)


def photo(array: np.ndarray, size: int = 224) -> torch.Tensor:
    """A [3, size, size] float crop in [0, 1] of a uint8 RGB photo, shorter side resized to size."""
    tensor = torch.from_numpy(np.array(array)).permute(2, 0, 1).float()[None] / 255
    resized = F.interpolate(tensor, scale_factor=size / min(array.shape[:2]), mode="bilinear", antialias=True)[0]
    return resized[:, :size, :size].clamp(0, 1)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return torch.stack([photo(skdata.chelsea()), photo(skdata.coffee())])


@pytest.fixture(scope="module")
def small_photos() -> torch.Tensor:
    return torch.stack([photo(skdata.chelsea(), 96), photo(skdata.coffee(), 96)])


def contiguous_masks(fraction: float, size: int = 224) -> torch.Tensor:
    """Most-relevant-first masks of two blobs: one in a corner, one at an edge (both touch the border)."""
    grid = torch.arange(size, dtype=torch.float64)
    corner = -(grid[:, None] ** 2 + grid[None, :] ** 2)
    edge = -((grid[:, None] - size / 2) ** 2 + (grid[None, :] - size + 1) ** 2)
    maps = torch.stack([corner, edge])
    count = round(fraction * size * size)
    order = maps.flatten(1).argsort(dim=1, descending=True)[:, :count]
    return torch.zeros(2, size * size, dtype=torch.bool).scatter_(1, order, True).view(2, size, size)


def random_masks(fraction: float, size: int = 224) -> torch.Tensor:
    """Random pixels, all four corners included."""
    masks = torch.rand(2, size, size, generator=torch.Generator().manual_seed(1)) < fraction
    masks[:, [0, 0, -1, -1], [0, -1, 0, -1]] = True
    return masks


def assert_matches_exact_solve(images: torch.Tensor, masks: torch.Tensor) -> None:
    imputed = noisy_linear_impute(images, masks, noise=0.0)
    for image, mask, result in zip(images, masks, imputed):
        assert (result.double() - exact_impute(image, mask)).abs().max() <= 1e-3


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("make_masks", [random_masks, contiguous_masks])
def test_matches_exact_solve(photos: torch.Tensor, fraction: float, make_masks) -> None:
    assert_matches_exact_solve(photos, make_masks(fraction))


def test_single_removed_pixel_is_weighted_neighbour_mean() -> None:
    image = torch.rand(1, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    removed = torch.zeros(1, 5, 5, dtype=torch.bool)
    removed[0, 2, 2] = True
    window = image[0, :, 1:4, 1:4]
    expected = SIDE * (window[:, 0, 1] + window[:, 1, 0] + window[:, 1, 2] + window[:, 2, 1]) + DIAGONAL * (
        window[:, 0, 0] + window[:, 0, 2] + window[:, 2, 0] + window[:, 2, 2]
    )
    result = noisy_linear_impute(image, removed, noise=0.0)
    torch.testing.assert_close(result[0, :, 2, 2], expected, atol=1e-5, rtol=0)


def test_removed_corner_renormalises_over_three_neighbours() -> None:
    image = torch.rand(1, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    removed = torch.zeros(1, 4, 6, dtype=torch.bool)
    removed[0, 0, 0] = True
    expected = (SIDE * (image[0, :, 0, 1] + image[0, :, 1, 0]) + DIAGONAL * image[0, :, 1, 1]) / (2 * SIDE + DIAGONAL)
    result = noisy_linear_impute(image, removed, noise=0.0)
    torch.testing.assert_close(result[0, :, 0, 0], expected, atol=1e-5, rtol=0)


def test_noise_only_on_imputed_pixels(small_photos: torch.Tensor) -> None:
    photos, masks = small_photos, contiguous_masks(0.5, 96)
    clean = noisy_linear_impute(photos, masks, noise=0.0)
    noisy = noisy_linear_impute(photos, masks, noise=0.01, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy[~masks[:, None].expand_as(noisy)], photos[~masks[:, None].expand_as(photos)])
    residual = (noisy - clean)[masks[:, None].expand_as(noisy)]
    assert abs(residual.std().item() - 0.01) <= 0.001
    again = noisy_linear_impute(photos, masks, noise=0.01, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)


def test_nothing_removed_returns_a_copy() -> None:
    images = torch.rand(2, 3, 8, 8)
    result = noisy_linear_impute(images, torch.zeros(2, 8, 8, dtype=torch.bool))
    assert torch.equal(result, images) and result.data_ptr() != images.data_ptr()


def test_everything_removed_fills_mid_grey_without_touching_other_images() -> None:
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    removed = torch.zeros(2, 8, 8, dtype=torch.bool)
    removed[0] = True
    removed[1, 3, 3] = True
    result = noisy_linear_impute(images, removed, noise=0.0)
    assert result.dtype == torch.float64 and result.shape == images.shape
    assert torch.all(result[0] == FILL_VALUE)
    expected = exact_impute(images[1], removed[1])
    assert (result[1] - expected).abs().max() <= 1e-5


def test_odd_sizes_match_exact_solve() -> None:
    image = torch.rand(1, 3, 37, 51, generator=torch.Generator().manual_seed(2))
    removed = torch.zeros(1, 37, 51, dtype=torch.bool)
    removed[0, 5:30, 10:51] = True
    result = noisy_linear_impute(image, removed, noise=0.0)
    assert (result[0].double() - exact_impute(image[0], removed[0])).abs().max() <= 1e-3


def test_chunks_on_a_thread_pool_match_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    images = torch.rand(6, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    removed = torch.rand(6, 24, 24, generator=torch.Generator().manual_seed(4)) < 0.6
    whole = noisy_linear_impute(images, removed, noise=0.0)
    monkeypatch.setattr(imputation, "_CHUNK_VALUES", 2 * 3 * 24 * 24)
    torch.set_num_threads(2)
    with torch.inference_mode():  # worker threads must inherit it
        chunked = noisy_linear_impute(images, removed, noise=0.0)
    assert torch.get_num_threads() == 2
    assert (chunked - whole).abs().max() <= 1e-4


def test_small_holes_anywhere_match_exact_solve() -> None:
    """Holes of different sizes and places (crops of different extents, some at the borders)."""
    images = torch.rand(5, 3, 40, 48, generator=torch.Generator().manual_seed(5))
    removed = torch.zeros(5, 40, 48, dtype=torch.bool)
    removed[0, 10:14, 20:30] = True
    removed[1, 0:5, 0:3] = True
    removed[2, 30:40, 40:48] = True
    removed[3, 1, 1] = True
    removed[3, 38, 46] = True
    removed[4, 15:25, 0:48] = True
    result = noisy_linear_impute(images, removed, noise=0.0)
    for image, mask, imputed in zip(images, removed, result):
        assert (imputed.double() - exact_impute(image, mask)).abs().max() <= 1e-3


def test_chunks_on_a_gpu_have_one_size_unless_free_memory_is_short(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda, full = torch.device("cuda"), imputation._ACCELERATOR_CHUNK_VALUES
    for free_gib in (80, 20):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free_gib * 2**30, 80 * 2**30))
        assert imputation._chunk_budget(cuda, torch.float32) == full
    assert imputation._chunk_budget(cuda, torch.float64) == 20 * 2**30 // 2 // (16 * 8)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * 2**30, 80 * 2**30))
    assert imputation._chunk_budget(cuda, torch.float32) == 2 * 2**30 // 2 // (16 * 4)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2**20, 80 * 2**30))
    assert imputation._chunk_budget(cuda, torch.float32) == imputation._CHUNK_VALUES
    assert imputation._chunk_budget(torch.device("cpu"), torch.float32) == imputation._CHUNK_VALUES


def test_all_of_roads_masks_in_one_chunk_match_exact_solve(
    small_photos: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An accelerator's plan: holes of every size, padded to the largest crop, solved as one chunk."""
    maps = torch.rand(2, 96, 96, generator=torch.Generator().manual_seed(6))
    masks = torch.cat([removal_masks(maps, p / 100, order) for order in ("morf", "lerf") for p in (10, 50, 90)])
    monkeypatch.setattr(imputation, "_CHUNK_VALUES", 2**40)
    assert len(imputation._plan_chunks(masks, 3, imputation._CHUNK_VALUES, workers=1)) == 1
    assert_matches_exact_solve(small_photos.repeat(6, 1, 1, 1), masks)
