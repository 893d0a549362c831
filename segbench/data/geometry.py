"""Resizing stacks of 2D slices: area/bilinear for images, nearest for label maps.

Used when the cache is built (``DataConfig.resize``) and by ``segbench predict`` to bring
predictions back to the input size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["resize_images", "resize_labels", "resized_spacing"]


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(S, C, H, W) -> (S, C, *size). Antialiased bilinear (no aliasing when shrinking); integer
    dtypes are rounded and clipped back to their dtype so the cache stays compact."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    out = F.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False, antialias=True).numpy()
    if np.issubdtype(images.dtype, np.integer):
        info = np.iinfo(images.dtype)
        out = np.clip(np.round(out), info.min, info.max).astype(images.dtype)
    return out


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(S, H, W) -> (S, *size), nearest neighbour, so no new label values appear."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    tensor = torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))[:, None].double()
    out = F.interpolate(tensor, size=tuple(size), mode="nearest-exact")[:, 0]
    return out.numpy().astype(labels.dtype)


def resized_spacing(spacing: tuple[float, ...], size: tuple[int, int], new_size: tuple[int, int]) -> tuple[float, ...]:
    """Voxel size of a stack resized in-plane from ``size`` to ``new_size`` (H, W): the last two axes
    stretch by old/new so the slices cover the same millimetres (distances stay in mm)."""
    *through, row, column = (float(s) for s in spacing)
    return (*through, row * size[0] / new_size[0], column * size[1] / new_size[1])
