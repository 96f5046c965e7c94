"""Telea inpainting: the P-TAME reference's conversions around cv2.inpaint, value for value."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pipeline.metrics.inpainting import telea_impute


def images_and_holes(count: int = 3, size: tuple[int, int] = (12, 10), seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, *size, generator=generator)
    removed = torch.rand(count, *size, generator=generator) < 0.4
    return images, removed


def reference_inpaint(image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """IDT-ITI/P-TAME ``InpaintingImputer.batched_call`` for one image ([3, H, W], keep mask [H, W] float)."""
    bgr = cv2.cvtColor(image.permute(1, 2, 0).numpy(), cv2.COLOR_RGB2BGR)
    bgr = (np.asarray(bgr, np.float32) * 255).astype(np.uint8)
    holes = cv2.bitwise_not((keep.numpy() * 255).astype(np.uint8))
    inpainted = cv2.inpaint(bgr, holes, inpaintRadius=3, flags=cv2.INPAINT_TELEA)
    return torch.tensor(cv2.cvtColor(inpainted, cv2.COLOR_BGR2RGB), dtype=image.dtype).permute(2, 0, 1) / 255.0


def test_equals_cv2_inpaint_called_per_image_like_the_reference() -> None:
    images, removed = images_and_holes()
    expected = torch.stack([reference_inpaint(image, (~holes).float()) for image, holes in zip(images, removed)])
    assert torch.equal(telea_impute(images, removed), expected)


def test_known_pixels_are_truncated_to_multiples_of_one_255th() -> None:
    images, removed = images_and_holes(seed=1)
    imputed = telea_impute(images, removed)
    quantised = (images * 255).to(torch.uint8) / 255
    known = ~removed.unsqueeze(1).expand_as(images)
    assert torch.equal(imputed[known], quantised[known])
    assert torch.equal(telea_impute(images, torch.zeros_like(removed)), quantised)
    assert not torch.equal(imputed[~known], quantised[~known]), "removed pixels are inpainted"
    assert 0 <= imputed.min() and imputed.max() <= 1


def test_result_does_not_depend_on_the_thread_count() -> None:
    images, removed = images_and_holes(count=6, seed=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = telea_impute(images, removed)
        torch.set_num_threads(2)
        pooled = telea_impute(images, removed)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, pooled)


def test_keeps_dtype_and_takes_one_channel() -> None:
    images, removed = images_and_holes(count=2, seed=3)
    assert telea_impute(images.double(), removed).dtype == torch.float64
    gray = telea_impute(images[:, :1], removed)
    assert gray.shape == (2, 1, 12, 10)
    for image, holes, result in zip(images, removed, gray):
        pixels = (image[0].numpy() * 255).astype(np.uint8)
        expected = cv2.inpaint(pixels, holes.numpy().astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
        assert torch.equal(result[0], torch.from_numpy(expected).float() / 255)


@pytest.mark.parametrize(
    "shape, removed_shape", [((2, 3, 8, 8), (2, 8, 7)), ((2, 2, 8, 8), (2, 8, 8)), ((3, 8, 8), (3, 8))]
)
def test_bad_shapes_raise(shape, removed_shape) -> None:
    with pytest.raises(ValueError):
        telea_impute(torch.rand(shape), torch.zeros(removed_shape, dtype=torch.bool))
