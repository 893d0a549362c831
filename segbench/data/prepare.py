"""Preparing new inputs for a trained model exactly as its training data was prepared: the one place
``segbench predict`` (and anything else that feeds a trained run new files) gets its network input from.

A run records how its data was prepared in its data info: the normalisation (``Normalization.to_dict``:
kind, per-channel mean/std, the stored dtype of the training images) and the channel count; its
``DataConfig`` gives the resize and, for volumes, the slice axis. From those, ``prepare_image`` and
``prepare_volume_slices`` repeat what the data layer did to the training data: channels (grey repeated
to RGB, an alpha channel dropped), resize, reorientation to RAS+ and slicing, and normalisation; they
refuse what training never saw in a way that would silently mislead (another bit depth than the one the
mean/std are in units of, 2D-trained models given volumes). Labels go back with ``restore_image`` /
``volumes.restore_volume``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from segbench.data.config import DataConfig, DataError
from segbench.data.dataset import Normalization
from segbench.data.geometry import resize_images, resize_labels
from segbench.data.volumes import PreparedVolume, normalize_volume, prepare_volume

__all__ = ["normalizer", "input_channels", "prepare_image", "restore_image", "prepare_volume_slices"]


def normalizer(normalization: dict | None) -> Callable[[np.ndarray], np.ndarray]:
    """(C, H, W) stored pixels -> network input, as the data layer normalised training images.
    ``normalization``: the run's ``Normalization.to_dict()`` (None for runs that did not record one)."""
    if normalization is None or normalization.get("kind") == "volume":
        # Training z-scored each volume; a lone 2D image is z-scored on its own the same way.
        return lambda image: np.moveaxis(normalize_volume(np.moveaxis(image, 0, -1)[..., None, :])[..., 0, :], -1, 0)
    return Normalization.from_dict(normalization)


def input_channels(image: np.ndarray, in_channels: int, path: Path) -> np.ndarray:
    """(C, H, W) as stored -> the model's channels: grey repeated to RGB, an alpha channel dropped."""
    if image.shape[0] == 1 and in_channels == 3:
        return np.repeat(image, 3, axis=0)  # grey among RGB, as the data layer does
    if image.shape[0] == 4 and in_channels == 3:
        return image[:3]
    if image.shape[0] != in_channels:
        raise DataError(f"{path} has {image.shape[0]} channel(s); the model takes {in_channels}")
    return image


def _check_bit_depth(stored: np.ndarray, normalization: dict, path: Path) -> None:
    trained = normalization.get("image_dtype") or ("uint8" if normalization.get("kind") == "imagenet" else None)
    if trained in ("uint8", "uint16") and normalization.get("kind") != "none" and stored.dtype != np.dtype(trained):
        bits = {"uint8": "8", "uint16": "16"}[trained]
        raise DataError(f"{path} holds {stored.dtype} pixels; the model was trained on {bits}-bit images and "
                        f"normalises them in those units, so it would see these out of range: convert it to {bits} bits")


def prepare_image(path: str | Path, normalization: dict | None, in_channels: int, cfg: DataConfig
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A 2D image file -> (its pixels as stored, with the model's channels [C, H, W]; the network input
    [C, H', W'] float32, resized to ``cfg.resize`` and normalised)."""
    from segbench.data.imageio import read_image

    path = Path(path)
    stored = np.array(input_channels(read_image(path), in_channels, path))  # writable: torch warns on read-only views
    _check_bit_depth(stored, normalization or {}, path)
    network_input = resize_images(stored[None], cfg.resize)[0] if cfg.resize else stored
    return stored, np.ascontiguousarray(normalizer(normalization)(network_input), dtype=np.float32)


def restore_image(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Predicted class ids [H', W'] -> [H, W] of the input (nearest neighbour when resized)."""
    return resize_labels(np.asarray(labels)[None], tuple(size))[0]


def prepare_volume_slices(path: str | Path, normalization: dict | None, in_channels: int, cfg: DataConfig
                          ) -> tuple[np.ndarray, PreparedVolume]:
    """A NIfTI volume -> (its slices as stored in RAS+ [S, C, H, W]; the prepared volume: its ``slices``
    the network input [S, C, H', W'] float32, and the geometry ``volumes.restore_volume`` puts labels back with)."""
    path = Path(path)
    normalization = normalization or {}
    if normalization.get("kind") == "imagenet" or normalization.get("image_dtype") in ("uint8", "uint16"):
        raise DataError(f"{path} is a NIfTI volume; the model was trained on {normalization.get('image_dtype', 'uint8')} "
                        "2D images and normalises in their units: give it images like those it was trained on")
    prepared = prepare_volume(path, cfg.slice_axis, zscore=False)  # RAS+, sliced, as stored
    stored = prepared.slices
    kind = normalization.get("kind", "volume")
    if kind == "volume":  # the volume's own statistics, per channel, as the data layer z-scored it
        slices = np.moveaxis(normalize_volume(np.moveaxis(stored, 1, -1)), -1, 1)
    else:
        slices = stored
    if cfg.resize:
        slices = resize_images(slices, cfg.resize)
    if slices.shape[1] != in_channels:
        raise DataError(f"{path} has {slices.shape[1]} channel(s); the model takes {in_channels}")
    if kind != "volume":
        normalize = normalizer(normalization)
        slices = np.stack([normalize(s) for s in slices])
    prepared.slices = np.ascontiguousarray(slices, dtype=np.float32)
    return stored, prepared
