"""PNG figures: saliency overlays, explanation grids and ROAD curves (matplotlib, Agg, no pyplot).

Figures are built with `matplotlib.figure.Figure` directly, so nothing is registered with pyplot's
global figure manager and nothing leaks across hundreds of trials. Pixel sizes are fixed (no
`bbox_inches="tight"`), see each function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

DPI = 100
CELL_INCHES = 3.0  # one grid cell: 3 in x 100 dpi = 300 x 300 px
TITLE_BAND_PX = 28  # the title strip above a single overlay
TITLE_MAX_CHARS = 40
ROAD_FIGSIZE = (6.0, 4.5)  # 600 x 450 px
COLORMAP = "jet"


def _to_numpy(array: Any) -> np.ndarray:
    """A float32 numpy copy of a numpy array or a (possibly GPU, possibly grad) torch tensor."""
    if hasattr(array, "detach"):
        array = array.detach().float().cpu().numpy()
    return np.asarray(array, dtype=np.float32)


def _resize(saliency: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float map to (height, width)."""
    if saliency.shape == (height, width):
        return saliency
    resized = Image.fromarray(saliency).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def overlay(image: Any, saliency: Any, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour-mapped saliency map over a photo.

    image: [3, H, W] in [0, 1] pixel space; saliency: [H, W] in [0, 1] (clipped; NaN counts as 0;
    a map of another size is bilinearly resized to the image). Returns uint8 RGB [H, W, 3].
    """
    photo = _to_numpy(image)
    if photo.ndim != 3 or photo.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got {list(photo.shape)}")
    heat = _to_numpy(saliency)
    if heat.ndim != 2:
        raise ValueError(f"saliency must be [H, W], got {list(heat.shape)}")
    height, width = photo.shape[1:]
    heat = np.clip(np.nan_to_num(_resize(heat, height, width)), 0.0, 1.0)
    colours = colormaps[COLORMAP](heat)[..., :3]
    blended = (1.0 - alpha) * np.clip(photo.transpose(1, 2, 0), 0.0, 1.0) + alpha * colours
    return np.round(blended * 255.0).astype(np.uint8)


def _short(title: str) -> str:
    return title if len(title) <= TITLE_MAX_CHARS else title[: TITLE_MAX_CHARS - 1] + "…"


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def save_overlay(image: Any, saliency: Any, path: str | Path, title: str | None = None) -> Path:
    """One overlay PNG at the image's own resolution: W x H px, plus a 28 px title band on top."""
    blended = overlay(image, saliency)
    height, width = blended.shape[:2]
    band = TITLE_BAND_PX if title else 0
    figure = Figure(figsize=(width / DPI, (height + band) / DPI), dpi=DPI)
    axes = figure.add_axes((0.0, 0.0, 1.0, height / (height + band)))
    axes.imshow(blended, interpolation="none")
    axes.set_axis_off()
    if title:
        figure.text(0.5, 1.0 - 0.5 * band / (height + band), _short(title), ha="center", va="center", fontsize=10)
    return _save(figure, path)


def explanation_grid(images: Any, saliencies: Any, titles: Sequence[str], path: str | Path, columns: int = 4) -> Path:
    """A grid of overlays with one title each (e.g. "Egyptian cat (0.62)").

    images: [N, 3, H, W]; saliencies: [N, H, W]. Each cell is 3 in x 100 dpi = 300 x 300 px, so the
    PNG is min(columns, N) * 300 px wide and ceil(N / columns) * 300 px high.
    """
    photos, maps = _to_numpy(images), _to_numpy(saliencies)
    count = len(photos)
    if count == 0 or len(maps) != count or len(titles) != count:
        raise ValueError(f"need as many saliencies and titles as images (>0): {count}, {len(maps)}, {len(titles)}")
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    height_in = rows * CELL_INCHES
    figure = Figure(figsize=(columns * CELL_INCHES, height_in), dpi=DPI)
    figure.subplots_adjust(
        left=0.01,
        right=0.99,
        bottom=0.01 * CELL_INCHES / height_in,
        top=1.0 - 0.3 / height_in,
        wspace=0.05,
        hspace=0.12,
    )
    grid = figure.subplots(rows, columns, squeeze=False)
    for index, axes in enumerate(grid.flat):
        axes.set_axis_off()
        if index < count:
            axes.imshow(overlay(photos[index], maps[index]))
            axes.set_title(_short(titles[index]), fontsize=10)
    return _save(figure, path)


def _with_endpoints(percentages: Sequence[float], accuracies: Sequence[float]) -> tuple[list, list]:
    """The curve with the fixed endpoints 0 % -> 1 and 100 % -> 0 added where missing."""
    xs, ys = list(percentages), list(accuracies)
    if not xs or xs[0] > 0:
        xs, ys = [0.0, *xs], [1.0, *ys]
    if xs[-1] < 100:
        xs, ys = [*xs, 100.0], [*ys, 0.0]
    return xs, ys


def road_curve(
    percentages: Sequence[float],
    morf: Sequence[float],
    lerf: Sequence[float],
    morf_auc: float,
    lerf_auc: float,
    path: str | Path,
    title: str | None = None,
) -> Path:
    """ROAD accuracy vs % of pixels removed, MoRF and LeRF, AUCs in the legend; 600 x 450 px.

    percentages are in percent (0-100); fractions (all <= 1) are scaled by 100. The endpoints
    0 % -> 1 and 100 % -> 0 are drawn as hollow markers.
    """
    removed = [float(p) for p in percentages]
    if removed and max(removed) <= 1.0:
        removed = [100.0 * p for p in removed]
    if not len(removed) == len(morf) == len(lerf):
        raise ValueError(f"lengths differ: {len(removed)} percentages, {len(morf)}, {len(lerf)}")
    figure = Figure(figsize=ROAD_FIGSIZE, dpi=DPI)
    axes = figure.add_subplot()
    curves = (
        ("MoRF", morf, morf_auc, "lower is better", "tab:red"),
        ("LeRF", lerf, lerf_auc, "higher is better", "tab:blue"),
    )
    for name, accuracies, auc, better, colour in curves:
        xs, ys = _with_endpoints(removed, accuracies)
        axes.plot(xs, ys, color=colour, label=f"{name}  AUC {auc:.3f} ({better})")
        axes.plot(removed, accuracies, "o", color=colour)
    axes.plot([0.0, 100.0], [1.0, 0.0], "o", color="black", markerfacecolor="white", clip_on=False)
    axes.set(
        xlim=(0, 100),
        ylim=(-0.02, 1.05),
        xlabel="% of pixels removed",
        ylabel="accuracy vs. original prediction",
        title=title or "ROAD",
    )
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right")
    figure.tight_layout()
    return _save(figure, path)


MAP_CELL_INCHES = 2.0  # one cell of a method or sanity grid: 200 x 200 px


def _caption(axes: Any, text: str, colour: str = "black") -> None:
    """Small text just below an image cell."""
    axes.text(0.5, -0.03, _short(text), transform=axes.transAxes, ha="center", va="top", fontsize=8, color=colour)


def method_grid(
    images: Any,
    columns: Mapping[str, Any],
    row_titles: Sequence[str],
    path: str | Path,
    notes: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """The same images in rows: the photo, then one overlay per method (P-TAME's Fig. 4 layout).

    images: [R, 3, H, W]; columns: method -> maps [R, H, W]; row_titles: a caption under each photo;
    notes: method -> one caption per row ("" for none), drawn in red under that cell (e.g. "untrained
    class"). Each cell is 2 in x 100 dpi = 200 px (plus 0.5 in for the captions of each row).
    """
    photos = _to_numpy(images)
    rows, count = len(photos), len(columns) + 1
    if rows == 0 or len(row_titles) != rows or any(len(maps) != rows for maps in columns.values()):
        raise ValueError(f"need one title and one map per method for each of the {rows} images (>0)")
    row_inches = MAP_CELL_INCHES + 0.5
    figure = Figure(figsize=(count * MAP_CELL_INCHES, rows * row_inches + 0.3), dpi=DPI)
    figure.subplots_adjust(
        left=0.01,
        right=0.99,
        bottom=0.5 / (rows * row_inches + 0.3),
        top=1 - 0.3 / (rows * row_inches + 0.3),
        wspace=0.04,
        hspace=0.25,
    )
    grid = figure.subplots(rows, count, squeeze=False)
    for row in range(rows):
        grid[row, 0].imshow(np.clip(photos[row].transpose(1, 2, 0), 0.0, 1.0))
        _caption(grid[row, 0], row_titles[row])
        for column, (method, maps) in enumerate(columns.items(), start=1):
            grid[row, column].imshow(overlay(photos[row], _to_numpy(maps[row])))
            note = (notes or {}).get(method, [""] * rows)[row]
            if note:
                _caption(grid[row, column], note, "tab:red")
    for column, title in enumerate(["image", *columns]):
        grid[0, column].set_title(_short(title), fontsize=10)
    for axes in grid.flat:
        axes.set_axis_off()
    return _save(figure, path)


def sanity_figure(
    levels: Sequence[str],
    ssim: Sequence[float],
    ssim_std: Sequence[float],
    images: Any,
    maps: Sequence[Any],
    path: str | Path,
    title: str,
) -> Path:
    """Model-parameter randomisation test (P-TAME's Fig. 5): mean SSIM (+- std over images) per level of
    cascading randomisation on top, and below the maps of a few images at every level.

    levels: one label per level, the original first; maps: per level [R, H, W] for images [R, 3, H, W].
    Each map cell is 2 in x 100 dpi = 200 px; the SSIM panel is 3 in high.
    """
    photos = _to_numpy(images)
    rows, count = len(photos), len(levels)
    if not len(ssim) == len(ssim_std) == len(maps) == count or any(len(m) != rows for m in maps):
        raise ValueError(f"need an SSIM, a std and maps of all {rows} images for each of the {count} levels")
    curve_inches = 3.0
    figure = Figure(figsize=(max(count, 4) * MAP_CELL_INCHES, curve_inches + rows * MAP_CELL_INCHES + 0.9), dpi=DPI)
    layout = figure.add_gridspec(
        rows + 1,
        count,
        height_ratios=[curve_inches, *[MAP_CELL_INCHES] * rows],
        hspace=0.35,
        wspace=0.04,
        left=0.06,
        right=0.99,
        top=0.95,
        bottom=0.02,
    )
    curve = figure.add_subplot(layout[0, :])
    positions = list(range(count))
    curve.errorbar(positions, ssim, yerr=ssim_std, marker="o", capsize=3, color="tab:blue")
    curve.set(
        ylim=(min(-0.05, min(ssim) - 0.05), 1.05),
        ylabel="SSIM to the original maps",
        title=title,
        xlim=(-0.5, count - 0.5),
    )
    curve.set_xticks(positions, [_short(label) for label in levels], rotation=30, ha="right", fontsize=8)
    curve.grid(alpha=0.3)
    for row in range(rows):
        for column in range(count):
            axes = figure.add_subplot(layout[row + 1, column])
            axes.imshow(overlay(photos[row], _to_numpy(maps[column][row])))
            axes.set_axis_off()
    return _save(figure, path)
