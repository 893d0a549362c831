"""Reading 2D images and masks with Pillow, in their native bit depth.

Images come back as ``(C, H, W)`` arrays in their stored dtype (uint8, uint16 for 16-bit grey PNG and
TIFF, int32 / float32 for 32-bit TIFF); masks as ``(H, W)`` integer arrays, or ``(H, W, 3)`` uint8 for
colour-coded (RGB) masks, which ``segbench.data.labels`` maps to class ids. Every read error becomes a
DataError that names the file. Pillow reads 16-bit RGB PNGs as 8-bit; use grey or TIFF for 16-bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from segbench.data.config import DataError

__all__ = ["IMAGE_EXTENSIONS", "ImageInfo", "probe_image", "read_image", "read_mask"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# Pillow mode -> (channels, numpy dtype) after read_image's conversion.
_IMAGE_MODES = {
    "1": (1, np.uint8),
    "L": (1, np.uint8),
    "LA": (1, np.uint8),
    "P": (3, np.uint8),
    "PA": (3, np.uint8),
    "RGB": (3, np.uint8),
    "RGBA": (3, np.uint8),
    "CMYK": (3, np.uint8),
    "YCbCr": (3, np.uint8),
    "I;16": (1, np.uint16),
    "I;16L": (1, np.uint16),
    "I;16B": (1, np.uint16),
    "I": (1, np.int32),
    "F": (1, np.float32),
}


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    size: tuple[int, int]  # (H, W)
    mode: str  # Pillow mode as stored
    channels: int  # after read_image's conversion
    dtype: str


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: not an image Pillow can open ({exc})") from None


def probe_image(path: str | Path) -> ImageInfo:
    """Size and mode from the header only (no pixel decoding)."""
    path = Path(path)
    with _open(path) as im:
        if im.mode not in _IMAGE_MODES:
            raise DataError(f"cannot read {path}: unsupported image mode {im.mode!r}")
        channels, dtype = _IMAGE_MODES[im.mode]
        return ImageInfo(path, (im.height, im.width), im.mode, channels, np.dtype(dtype).name)


def _decode(path: Path) -> tuple[np.ndarray, str, list[int] | None]:
    """Decode all pixels: (array, mode, raw palette for P images)."""
    with _open(path) as im:
        try:
            im.load()
        except (OSError, ValueError, SyntaxError) as exc:  # truncated / corrupt data
            raise DataError(f"cannot read {path}: {exc}") from None
        mode = im.mode
        if mode in ("P", "PA"):
            palette = im.getpalette() or []
            return np.asarray(im), mode, palette
        if mode == "LA":
            im = im.convert("L")
        elif mode in ("RGBA", "CMYK", "YCbCr"):
            im = im.convert("RGB")
        array = np.asarray(im)
    if mode == "1":
        array = array.astype(np.uint8)
    elif mode.startswith("I;16"):
        array = array.astype(np.uint16)
    return array, mode, None


def read_image(path: str | Path) -> np.ndarray:
    """Pixels as (C, H, W) in the stored dtype. Palette images are expanded to RGB."""
    path = Path(path)
    array, mode, palette = _decode(path)
    if mode in ("P", "PA"):
        colours = np.asarray(palette + [0] * (768 - len(palette)), dtype=np.uint8).reshape(-1, 3)
        array = colours[array]
    elif mode == "1":
        array = array * np.uint8(255)
    if array.ndim == 2:
        array = array[None]
    else:
        array = np.moveaxis(array, -1, 0)
    return np.ascontiguousarray(array)


def read_mask(path: str | Path) -> tuple[np.ndarray, list[tuple[int, int, int]] | None]:
    """Mask as (H, W) integers, or (H, W, 3) uint8 when colours are not grey; plus the palette of a
    P-mode PNG (whose pixel values are already the class indices, as in Pascal VOC)."""
    path = Path(path)
    array, mode, palette = _decode(path)
    if mode in ("P", "PA"):
        colours = [tuple(palette[i : i + 3]) for i in range(0, len(palette) - 2, 3)]
        used = int(array.max()) + 1 if array.size else 0
        return array.astype(np.uint8), colours[:used]
    if mode == "F":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise DataError(f"mask {path} holds non-integer values (float TIFF); masks must hold class ids")
        array = array.astype(np.int32)
    if array.ndim == 3:
        if np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2]):
            return array[..., 0], None  # grey values stored as RGB
        return array, None
    return array, None
