"""Noisy linear imputation (ROAD, Rong et al. 2022), batched in torch.

Every removed pixel becomes the weighted mean of its in-bounds 8 neighbours (1/6 for side,
1/12 for diagonal neighbours, renormalised at borders). All removed pixels of an image are
solved jointly with the known pixels as Dirichlet boundary: a sparse SPD system per image and
channel. We solve it with conjugate gradients preconditioned by an aggregation multigrid
cycle (2x2 Galerkin coarse operators, Jacobi smoothing, dense solve on the coarsest grid), all
images and channels of a chunk at once, until every system's last update is below a tolerance
(measured: max error vs. an exact sparse solve about 3e-4 for 224 x 224 photos). Each image is
cut to the bounding box of its holes first, so small holes cost little.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
_CENTER = _OFFSETS.index((0, 0))
_WEIGHTS = tuple(0.0 if dy == dx == 0 else (1 / 12 if dy and dx else 1 / 6) for dy, dx in _OFFSETS)
# An image with no known pixel has no boundary to interpolate from: it becomes mid-grey.
FILL_VALUE = 0.5
# Values (images x channels x pixels) solved together on the CPU: large enough for few
# Python-level ops, small enough to stay in cache (8 RGB images of 224 x 224).
_CHUNK_VALUES = 8 * 3 * 224 * 224
# On an accelerator every op costs a launch whatever its size, so chunks are large: all masks of
# 64 RGB images of 224 x 224 in ROAD (2 orders x 7 percentages). The same budget on every GPU keeps
# the chunks, and so the results, independent of the memory other processes hold, unless free
# memory is short: peak memory is about 14 tensors of the chunk's size (measured on the CPU: 45-55
# bytes per float32 value); we plan for 16 and use at most half of the free memory.
_ACCELERATOR_CHUNK_VALUES = 64 * 14 * 3 * 224 * 224
_PEAK_TENSORS = 16
_FREE_MEMORY_SHARE = 0.5
_COARSEST_SIZE = 8
_FINE_DAMPING = 1.0
_COARSE_DAMPING = 0.8
_COARSE_SCALE = 1.5
_W_CYCLE_FROM = 2
# Stop once every system's last CG update is below this (max norm); the remaining error is
# about half of it for the measured convergence rate, well within the 1e-3 accuracy target.
_TOLERANCE = 8e-4
_MAX_ITERATIONS = 200


def noisy_linear_impute(
    images: torch.Tensor,
    removed: torch.Tensor,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Impute ``removed`` pixels ([B, H, W] bool) of ``images`` ([B, C, H, W], [0, 1] pixel space).

    Known pixels are returned bit-exactly; imputed ones get Gaussian noise of std ``noise``
    (drawn with ``generator``). An image with every pixel removed becomes FILL_VALUE plus noise.
    Computes in float32 (float64 for float64 input) on the images' device.
    """
    if images.dim() != 4 or removed.shape != images.shape[:1] + images.shape[2:]:
        raise ValueError(f"expected images [B, C, H, W] and removed [B, H, W], got {images.shape}, {removed.shape}")
    removed = removed.to(device=images.device, dtype=torch.bool)
    solved = images.to(torch.promote_types(images.dtype, torch.float32), copy=True)
    full = removed.flatten(1).all(dim=1)
    _solve_in_chunks(solved, removed & ~full[:, None, None])
    solved[full] = FILL_VALUE
    if noise > 0:
        solved += noise * torch.randn(solved.shape, generator=generator, device=solved.device, dtype=solved.dtype)
    return torch.where(removed[:, None], solved.to(images.dtype), images)


@dataclass
class _Chunk:
    """Images solved together on crops of one size: (image index, crop top, crop left) each."""

    height: int
    width: int
    crops: list[tuple[int, int, int]]


def _plan_chunks(removed: torch.Tensor, channels: int, budget: int, workers: int) -> list[_Chunk]:
    """Crop every image with holes to their bounding box plus a one-pixel frame, largest first,
    and group the crops into chunks of at most ``budget`` values (at least one image each),
    and into at least ``workers`` chunks where there are enough images."""
    height, width = removed.shape[-2:]
    rows, cols = removed.any(dim=2), removed.any(dim=1)
    present = rows.any(dim=1)
    first_row, last_row = rows.int().argmax(dim=1), height - 1 - rows.flip(1).int().argmax(dim=1)
    first_col, last_col = cols.int().argmax(dim=1), width - 1 - cols.flip(1).int().argmax(dim=1)
    boxes = torch.stack([first_row, last_row, first_col, last_col], dim=1)[present].tolist()
    needs = [
        (index, min(height, bottom - top + 3), min(width, right - left + 3), top, left)
        for index, (top, bottom, left, right) in zip(present.nonzero()[:, 0].tolist(), boxes)
    ]
    needs.sort(key=lambda need: need[1] * need[2], reverse=True)
    total = sum(channels * crop_height * crop_width for _, crop_height, crop_width, _, _ in needs)
    budget = min(budget, -(-total // workers))
    chunks: list[_Chunk] = []
    for index, crop_height, crop_width, top, left in needs:
        chunk = chunks[-1] if chunks else None
        if (
            chunk is None
            or (len(chunk.crops) + 1) * channels * max(chunk.height, crop_height) * max(chunk.width, crop_width)
            > budget
        ):
            chunk = _Chunk(crop_height, crop_width, [])
            chunks.append(chunk)
        chunk.height, chunk.width = max(chunk.height, crop_height), max(chunk.width, crop_width)
        chunk.crops.append((index, top, left))
    for chunk in chunks:  # place each crop: frame the holes, stay inside the image
        chunk.crops = [
            (index, min(max(top - 1, 0), height - chunk.height), min(max(left - 1, 0), width - chunk.width))
            for index, top, left in chunk.crops
        ]
    return chunks


def _solve_in_chunks(images: torch.Tensor, removed: torch.Tensor) -> None:
    """Impute in place, chunk by chunk (see _plan_chunks).

    Known pixels beyond the one-pixel frame around the holes do not enter the equations, and a
    crop edge that is not an image edge holds known pixels only, so crops solve the same system.
    On the CPU, chunks run on a pool of torch.get_num_threads() Python threads with one intra-op
    thread each (restored afterwards): on a busy machine this is far faster than splitting every
    small op across threads.
    """
    on_cpu = images.device.type == "cpu"
    threads = torch.get_num_threads()
    workers = threads if on_cpu else 1
    chunks = _plan_chunks(removed, images.shape[1], _chunk_budget(images.device, images.dtype), workers)

    inference = torch.is_inference_mode_enabled()  # thread-local, like grad mode: hand it over

    def solve(chunk: _Chunk) -> None:
        with torch.inference_mode(inference), torch.no_grad():
            _solve_chunk(images, removed, chunk)

    if not on_cpu:
        for chunk in chunks:
            solve(chunk)
        return
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(min(workers, max(len(chunks), 1))) as pool:
            list(pool.map(solve, chunks))
    finally:
        torch.set_num_threads(threads)


def _chunk_budget(device: torch.device, dtype: torch.dtype) -> int:
    """Values solved together on ``device``: _CHUNK_VALUES on the CPU, _ACCELERATOR_CHUNK_VALUES on an
    accelerator, less on a CUDA device whose free memory is short."""
    if device.type == "cpu":
        return _CHUNK_VALUES
    if device.type != "cuda":
        return _ACCELERATOR_CHUNK_VALUES
    free_bytes, _ = torch.cuda.mem_get_info(device)
    affordable = int(free_bytes * _FREE_MEMORY_SHARE) // (_PEAK_TENSORS * dtype.itemsize)
    return max(_CHUNK_VALUES, min(_ACCELERATOR_CHUNK_VALUES, affordable))


def _solve_chunk(images: torch.Tensor, removed: torch.Tensor, chunk: _Chunk) -> None:
    """Solve one chunk's crops and write them back into images."""
    windows = [
        (index, slice(top, top + chunk.height), slice(left, left + chunk.width)) for index, top, left in chunk.crops
    ]
    crops = torch.stack([images[index, :, rows, cols] for index, rows, cols in windows])
    holes = torch.stack([removed[index, rows, cols] for index, rows, cols in windows])
    for (index, rows, cols), result in zip(windows, _solve(crops, holes)):
        images[index, :, rows, cols] = result


def _box121(x: torch.Tensor) -> torch.Tensor:
    """The separable [1, 2, 1] x [1, 2, 1] sum over each pixel's 3x3 window of x [..., H, W], zero outside."""
    rows = x * 2
    rows[..., 1:] += x[..., :-1]
    rows[..., :-1] += x[..., 1:]
    total = rows * 2
    total[..., 1:, :] += rows[..., :-1, :]
    total[..., :-1, :] += rows[..., 1:, :]
    return total


def _neighbour_sum(x: torch.Tensor) -> torch.Tensor:
    """Weighted sum of the in-bounds 8 neighbours (zero outside) of every pixel of x [..., H, W]."""
    return _box121(x).sub_(x, alpha=4).div_(12)


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """y[..., i, j] = x[..., i + dy, j + dx], zero where that is out of bounds."""
    height, width = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    return padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]


@dataclass
class _FineLevel:
    """The image grid: constant 8-neighbour stencil restricted to the unknown pixels."""

    unknown: torch.Tensor  # [M, 1, H, W] float, 1 at removed pixels
    weight_sum: torch.Tensor  # [H, W], sum of in-bounds neighbour weights

    def __post_init__(self) -> None:
        self.inv_diag = self.unknown / self.weight_sum
        # A e = unknown * (weight_sum * e - neighbour_sum(e)), with neighbour_sum = (box121(e) - 4 e) / 12.
        self._center = self.unknown * (self.weight_sum + 1 / 3)
        self._box_weight = self.unknown / -12

    def apply(self, e: torch.Tensor) -> torch.Tensor:
        """A e for a correction e that is zero at known pixels."""
        return (self._center * e).addcmul_(_box121(e), self._box_weight)

    def stencil(self) -> torch.Tensor:
        """The operator as a variable 9-point stencil [M, 9, H, W]."""
        columns = [
            self.unknown[:, 0] * self.weight_sum
            if k == _CENTER
            else -_WEIGHTS[k] * self.unknown[:, 0] * _shifted(self.unknown[:, 0], dy, dx)
            for k, (dy, dx) in enumerate(_OFFSETS)
        ]
        return torch.stack(columns, dim=1)


@dataclass
class _CoarseLevel:
    """A coarse grid with a variable 9-point Galerkin stencil."""

    stencil: torch.Tensor  # [M, 9, h, w]
    unknown: torch.Tensor  # [M, 1, h, w] float
    inv_diag: torch.Tensor  # [M, 1, h, w]

    def apply(self, e: torch.Tensor) -> torch.Tensor:
        height, width = e.shape[-2:]
        out = self.stencil[:, _CENTER : _CENTER + 1] * e
        for k, (dy, dx) in enumerate(_OFFSETS):
            if k == _CENTER:
                continue
            rows, source_rows = _overlap(dy, height), _overlap(-dy, height)
            cols, source_cols = _overlap(dx, width), _overlap(-dx, width)
            out[..., rows, cols].addcmul_(self.stencil[:, k : k + 1, rows, cols], e[..., source_rows, source_cols])
        return out


def _overlap(offset: int, size: int) -> slice:
    """Indices i of an axis of length size for which i + offset is inside it."""
    return slice(max(0, -offset), size - max(0, offset))


def _pad_even(x: torch.Tensor) -> torch.Tensor:
    """x zero-padded at the bottom and right to even height and width; x itself when they are even (a pad of
    nothing would copy it)."""
    if x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0:
        return x
    return torch.nn.functional.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))


def _coarsen(stencil: torch.Tensor) -> torch.Tensor:
    """Galerkin product P^T A P for piecewise-constant 2x2 aggregation, as a 9-point stencil."""
    stencil = _pad_even(stencil)
    batch, _, height, width = stencil.shape
    coarse = stencil.new_zeros(batch, 9, height // 2, width // 2)
    for a in (0, 1):
        for b in (0, 1):
            block = stencil[..., a::2, b::2]
            for k, (dy, dx) in enumerate(_OFFSETS):
                coarse[:, _OFFSETS.index(((a + dy) // 2, (b + dx) // 2))] += block[:, k]
    return coarse


def _coarse_level(stencil: torch.Tensor) -> _CoarseLevel:
    diag = stencil[:, _CENTER : _CENTER + 1]
    unknown = (diag > 0).to(stencil.dtype)
    return _CoarseLevel(stencil, unknown, unknown / diag.clamp_min(1e-30))


def _restrict(r: torch.Tensor) -> torch.Tensor:
    """Sum over 2x2 blocks (P^T for piecewise-constant aggregation)."""
    r = _pad_even(r)
    rows = r[..., 0::2, :] + r[..., 1::2, :]
    return rows[..., 0::2] + rows[..., 1::2]


def _add_prolonged(e: torch.Tensor, coarse_e: torch.Tensor, unknown: torch.Tensor, scale: float) -> torch.Tensor:
    """e += scale * unknown * P coarse_e, P copying each coarse value to its 2x2 block."""
    height, width = e.shape[-2:]
    if height % 2 or width % 2:
        fine = coarse_e.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., :height, :width]
        return e.addcmul_(fine, unknown, value=scale)
    blocks = e.unflatten(-1, (width // 2, 2)).unflatten(-3, (height // 2, 2))
    blocks.addcmul_(
        coarse_e[..., :, None, :, None],
        unknown.unflatten(-1, (width // 2, 2)).unflatten(-3, (height // 2, 2)),
        value=scale,
    )
    return e


def _dense_inverse(stencil: torch.Tensor) -> torch.Tensor:
    """Inverse of a 9-point stencil operator [M, 9, h, w] as dense [M, n, n] matrices (identity rows where unused)."""
    batch, _, height, width = stencil.shape
    n = height * width
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    matrix = stencil.new_zeros(batch, n, n)
    for k, (dy, dx) in enumerate(_OFFSETS):
        inside = (rows + dy >= 0) & (rows + dy < height) & (cols + dx >= 0) & (cols + dx < width)
        source = (rows * width + cols)[inside].to(stencil.device)
        target = ((rows + dy) * width + cols + dx)[inside].to(stencil.device)
        matrix[:, source, target] += stencil[:, k].flatten(1)[:, source]
    unused = stencil[:, _CENTER].flatten(1) <= 0
    matrix.diagonal(dim1=1, dim2=2).masked_fill_(unused, 1.0)
    return torch.linalg.inv(matrix)


class _Multigrid:
    """A symmetric multigrid cycle, used as the CG preconditioner.

    V-cycle on the two finest grids, W-cycle below, where grids are cheap.
    """

    def __init__(self, fine: _FineLevel) -> None:
        self.levels: list[_FineLevel | _CoarseLevel] = [fine]
        stencil = fine.stencil()
        while max(stencil.shape[-2:]) > _COARSEST_SIZE:
            stencil = _coarsen(stencil)
            self.levels.append(_coarse_level(stencil))
        self.coarsest_inverse = _dense_inverse(stencil)

    def __call__(self, r: torch.Tensor, depth: int = 0) -> torch.Tensor:
        level = self.levels[depth]
        if depth == len(self.levels) - 1:
            batch, channels, height, width = r.shape
            flat = r.flatten(2).transpose(1, 2)
            return (self.coarsest_inverse @ flat).transpose(1, 2).reshape(batch, channels, height, width)
        step = level.inv_diag * (_FINE_DAMPING if depth == 0 else _COARSE_DAMPING)
        e = r * step
        for _ in range(1 if depth < _W_CYCLE_FROM else 2):
            coarse_e = self(_restrict(r - level.apply(e)), depth + 1)
            _add_prolonged(e, coarse_e, level.unknown, _COARSE_SCALE)
            e.addcmul_(r - level.apply(e), step)
        return e


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-system inner products [M, C, 1, 1]."""
    return torch.linalg.vecdot(a.flatten(2), b.flatten(2))[..., None, None]


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 0 where the denominator is not positive (an already solved system)."""
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-30), torch.zeros_like(numerator))


def _solve(images: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Solve the imputation systems of one chunk; returns images with removed pixels replaced."""
    unknown = removed[:, None].to(images.dtype)
    weight_sum = _neighbour_sum(torch.ones(images.shape[-2:], dtype=images.dtype, device=images.device))
    fine = _FineLevel(unknown, weight_sum)
    precondition = _Multigrid(fine)
    x = images * (1 - unknown)
    residual = (_neighbour_sum(x) - weight_sum * x).mul_(unknown)
    z = precondition(residual)
    direction = z.clone()
    rz = _dot(residual, z)
    for _ in range(_MAX_ITERATIONS):
        product = fine.apply(direction)
        alpha = _ratio(rz, _dot(direction, product))
        x.addcmul_(direction, alpha)
        # the largest update of each system (abs + amax: an order of magnitude faster on the CPU than aminmax)
        if (direction.flatten(2).abs().amax(dim=-1) * alpha[..., 0, 0].abs()).max().item() < _TOLERANCE:
            break
        residual.addcmul_(product, alpha, value=-1)
        z = precondition(residual)
        rz_next = _dot(residual, z)
        direction = torch.addcmul(z, direction, _ratio(rz_next, rz))
        rz = rz_next
    return x
