"""Preparing new inputs for a trained model exactly as its training data was prepared, and back.

``segbench predict`` reads an image (or volume) with these, runs the model on the returned tensor(s),
and hands the predicted class ids to ``restore_image`` / ``volumes.restore_volume`` to get them in the
input's size (and, for NIfTI, voxel grid: write them with ``volumes.write_labels``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from segbench.data import imageio
from segbench.data.config import DataConfig, DataError
from segbench.data.dataset import Normalization
from segbench.data.geometry import resize_images, resize_labels
from segbench.data.volumes import PreparedVolume, prepare_volume

__all__ = ["prepare_image", "restore_image", "prepare_volume_slices"]


def _paths(paths: str | Path | Sequence) -> list[Path]:
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def prepare_image(
    paths: str | Path | Sequence, normalization: Normalization, in_channels: int, cfg: DataConfig
) -> tuple[torch.Tensor, tuple[int, int]]:
    """A 2D image (one file, or one file per channel) -> (network input [C, H, W], original (H, W))."""
    image = np.concatenate([imageio.read_image(p) for p in _paths(paths)], axis=0)
    if image.shape[0] == 1 and in_channels == 3:
        image = np.repeat(image, 3, axis=0)
    if image.shape[0] != in_channels:
        raise DataError(f"{paths} has {image.shape[0]} channel(s); the model was trained on {in_channels}")
    size = (int(image.shape[1]), int(image.shape[2]))
    if cfg.resize is not None:
        image = resize_images(image[None], cfg.resize)[0]
    return torch.from_numpy(normalization(image)), size


def restore_image(labels: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Predicted class ids [H', W'] -> [H, W] of the input (nearest neighbour when resized)."""
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return resize_labels(labels[None], size)[0]


def prepare_volume_slices(
    paths: str | Path | Sequence, normalization: Normalization, cfg: DataConfig
) -> tuple[torch.Tensor, PreparedVolume]:
    """A NIfTI volume -> (network input [S, C, H, W], geometry for ``volumes.restore_volume``)."""
    prepared = prepare_volume(_paths(paths), cfg.slice_axis, cfg.resize, zscore=normalization.kind == "volume")
    slices = prepared.slices if normalization.kind == "volume" else np.stack([normalization(s) for s in prepared.slices])
    return torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32)), prepared
