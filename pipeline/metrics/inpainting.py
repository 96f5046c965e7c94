"""Telea inpainting (OpenCV), the imputer of the P-TAME paper's ROAD (Table 1).

Follows the authors' ``InpaintingImputer`` (IDT-ITI/P-TAME, ``utils/noisy_linear_imputation.py``)
value for value: each image goes to BGR ``uint8(x * 255)`` (float32, truncated), is inpainted with
``cv2.inpaint(..., inpaintRadius=3, flags=cv2.INPAINT_TELEA)`` where pixels are removed, and comes
back as RGB ``value / 255``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch

INPAINT_RADIUS = 3


def telea_impute(images: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Inpaint ``removed`` pixels ([B, H, W] bool) of ``images`` ([B, C, H, W], C = 1 or 3, [0, 1]).

    As in the reference, the whole image goes through uint8 and back, so known pixels are not
    returned unchanged: each becomes ``uint8(x * 255) / 255``, i.e. truncated down to a multiple of
    1/255 (values outside [0, 1] are clamped first). Images are inpainted on the CPU, one per task
    in a pool of ``torch.get_num_threads()`` threads (OpenCV releases the GIL); the result has the
    images' dtype and device.
    """
    if images.dim() != 4 or removed.shape != images.shape[:1] + images.shape[2:]:
        raise ValueError(f"expected images [B, C, H, W] and removed [B, H, W], got {images.shape}, {removed.shape}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"Telea inpainting needs 1 or 3 channels, got {images.shape[1]}")
    pixels = images.detach().to("cpu", torch.float32).clamp(0, 1).permute(0, 2, 3, 1).flip(-1).numpy()
    pixels = (pixels * np.float32(255)).astype(np.uint8, order="C")  # BGR, truncated like the reference
    holes = removed.detach().cpu().numpy().astype(np.uint8) * 255
    inpainted = np.empty_like(pixels)

    def inpaint(index: int) -> None:
        inpainted[index] = cv2.inpaint(pixels[index], holes[index], INPAINT_RADIUS, cv2.INPAINT_TELEA).reshape(
            pixels.shape[1:]
        )

    with ThreadPoolExecutor(max(1, min(len(pixels), torch.get_num_threads()))) as pool:
        list(pool.map(inpaint, range(len(pixels))))
    rgb = torch.from_numpy(inpainted).flip(-1).permute(0, 3, 1, 2)
    return (rgb.to(images.dtype) / 255).to(images.device)
