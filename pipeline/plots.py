"""PNG figures: saliency overlays, explanation grids and ROAD curves (matplotlib, Agg, no pyplot).

Figures are built with `matplotlib.figure.Figure` directly, so nothing is registered with pyplot's
global figure manager and nothing leaks across hundreds of trials. Pixel sizes are fixed (no
`bbox_inches="tight"`), see each function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
        figure.text(0.5, 1.0 - 0.5 * band / (height + band), _short(title),
                    ha="center", va="center", fontsize=10)
    return _save(figure, path)


def explanation_grid(
    images: Any, saliencies: Any, titles: Sequence[str], path: str | Path, columns: int = 4
) -> Path:
    """A grid of overlays with one title each (e.g. "Egyptian cat (0.62)").

    images: [N, 3, H, W]; saliencies: [N, H, W]. Each cell is 3 in x 100 dpi = 300 x 300 px, so the
    PNG is min(columns, N) * 300 px wide and ceil(N / columns) * 300 px high.
    """
    photos, maps = _to_numpy(images), _to_numpy(saliencies)
    count = len(photos)
    if count == 0 or len(maps) != count or len(titles) != count:
        raise ValueError(
            f"need as many saliencies and titles as images (>0): {count}, {len(maps)}, {len(titles)}"
        )
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    height_in = rows * CELL_INCHES
    figure = Figure(figsize=(columns * CELL_INCHES, height_in), dpi=DPI)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01 * CELL_INCHES / height_in,
                           top=1.0 - 0.3 / height_in, wspace=0.05, hspace=0.12)
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
    curves = (("MoRF", morf, morf_auc, "lower is better", "tab:red"),
              ("LeRF", lerf, lerf_auc, "higher is better", "tab:blue"))
    for name, accuracies, auc, better, colour in curves:
        xs, ys = _with_endpoints(removed, accuracies)
        axes.plot(xs, ys, color=colour, label=f"{name}  AUC {auc:.3f} ({better})")
        axes.plot(removed, accuracies, "o", color=colour)
    axes.plot([0.0, 100.0], [1.0, 0.0], "o", color="black", markerfacecolor="white", clip_on=False)
    axes.set(xlim=(0, 100), ylim=(-0.02, 1.05), xlabel="% of pixels removed",
             ylabel="accuracy vs. original prediction", title=title or "ROAD")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right")
    figure.tight_layout()
    return _save(figure, path)
