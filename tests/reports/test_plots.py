"""Overlays, explanation grids and ROAD curves render to PNGs of the documented pixel sizes."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from pipeline.reports import plots


def _blob(height: int, width: int, centre: tuple[float, float]) -> torch.Tensor:
    """A Gaussian bump in [0, 1] centred at (row, column) fractions of the map."""
    rows = torch.linspace(0, 1, height)[:, None]
    cols = torch.linspace(0, 1, width)[None, :]
    return torch.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / 0.02)


def _photos(count: int, height: int = 48, width: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(count, 3, height, width, generator=generator)


def test_overlay_shape_dtype_and_colour() -> None:
    image = torch.zeros(3, 48, 64)
    saliency = _blob(48, 64, (0.5, 0.5))
    blended = plots.overlay(image, saliency, alpha=1.0)
    assert blended.shape == (48, 64, 3) and blended.dtype == np.uint8
    # jet: hot centre is red-ish, cold corner is blue-ish
    assert blended[24, 32, 0] > blended[24, 32, 2]
    assert blended[0, 0, 2] > blended[0, 0, 0]


def test_overlay_resizes_clips_and_accepts_numpy() -> None:
    image = np.full((3, 40, 40), 0.5, dtype=np.float32)
    saliency = np.array([[0.0, 2.0], [np.nan, -1.0]], dtype=np.float32)
    blended = plots.overlay(image, saliency, alpha=0.0)
    assert blended.shape == (40, 40, 3)
    assert (blended == 128).all()  # alpha 0 leaves the photo untouched


def test_overlay_rejects_channels_last() -> None:
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        plots.overlay(torch.zeros(48, 64, 3), torch.zeros(48, 64))


@pytest.mark.parametrize(("count", "columns", "size"), [(6, 4, (1200, 600)), (3, 4, (900, 300))])
def test_explanation_grid_pixel_size(tmp_path, count, columns, size) -> None:
    images = _photos(count)
    saliencies = torch.stack([_blob(48, 64, (0.2 + 0.1 * i, 0.7)) for i in range(count)])
    titles = [f"class {i} ({0.5 + i / 20:.2f})" for i in range(count)]
    path = plots.explanation_grid(images, saliencies, titles, tmp_path / "grid.png", columns)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == size


def test_explanation_grid_needs_one_title_per_image(tmp_path) -> None:
    with pytest.raises(ValueError, match="titles"):
        plots.explanation_grid(_photos(2), torch.rand(2, 48, 64), ["one"], tmp_path / "g.png")


def test_save_overlay_keeps_image_resolution(tmp_path) -> None:
    image, saliency = _photos(1, 120, 160)[0], _blob(30, 40, (0.5, 0.5))
    with Image.open(plots.save_overlay(image, saliency, tmp_path / "a.png")) as png:
        assert png.size == (160, 120)
    titled = plots.save_overlay(image, saliency, tmp_path / "sub" / "b.png", title="tabby (0.9)")
    with Image.open(titled) as png:
        assert png.size == (160, 120 + plots.TITLE_BAND_PX)


@pytest.mark.parametrize("percentages", [[10, 20, 30, 40, 50, 70, 90], [0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9]])
def test_road_curve_png(tmp_path, percentages) -> None:
    morf = [0.6, 0.4, 0.3, 0.2, 0.15, 0.1, 0.05]
    lerf = [0.95, 0.93, 0.9, 0.85, 0.8, 0.6, 0.3]
    path = plots.road_curve(percentages, morf, lerf, 0.21, 0.74, tmp_path / "road.png", "trial 3")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (600, 450)


def test_road_curve_rejects_mismatched_lengths(tmp_path) -> None:
    with pytest.raises(ValueError, match="lengths"):
        plots.road_curve([10, 20], [0.5], [0.9, 0.8], 0.1, 0.9, tmp_path / "road.png")


def test_no_figures_leak(tmp_path, monkeypatch) -> None:
    """Every figure the plots draw is gone after a garbage collection (one: the heap holds torch, Ax and MLflow, so
    each collection takes a while)."""
    created = []
    init = Figure.__init__

    def tracked(figure, *args, **kwargs):
        init(figure, *args, **kwargs)
        created.append(weakref.ref(figure))

    monkeypatch.setattr(Figure, "__init__", tracked)
    for index in range(2):
        plots.road_curve([50], [0.3], [0.8], 0.3, 0.7, tmp_path / f"{index}.png")
        plots.explanation_grid(_photos(2), torch.rand(2, 48, 64), ["a", "b"], tmp_path / "g.png")
    gc.collect()
    assert len(created) == 4 and [ref() for ref in created] == [None] * 4
