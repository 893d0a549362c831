"""The built-in ``brain-mri`` dataset: the MNI152 2009a symmetric T1 template with a 4-class tissue map.

No download: nilearn's wheel ships the template (``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_
nlin_sym_09a_converted.nii.gz``, 197 x 233 x 189 at 1 mm, brain-extracted). We locate the files with
``importlib.util.find_spec`` so nilearn's heavy modules are never imported.

The deterministic rule (``BRAIN_RULE_VERSION`` is part of the cache key):

1. Resample to 2 mm by 2 x 2 x 2 block averaging of T1, grey- and white-matter probabilities (the
   odd last voxel of each axis is dropped) -> 98 x 116 x 94.
2. Brain mask: gm + wm > 0.5, closed twice with the 6-connected cross (fills sulci up to ~4 mm),
   holes filled (ventricles), largest connected component kept.
3. Labels: 0 outside the mask; inside, 1 + argmax(csf, gm, wm) with csf = 1 - gm - wm, so
   1 = CSF (ventricles, sulci) and other non-GM/WM tissue, 2 = grey matter, 3 = white matter.
4. Crop to the labelled bounding box with a 4-voxel (8 mm) margin in-plane and 1 slice above and below
   -> 80 x 98 in-plane, 77 axial slices.
5. A little realism, fixed forever: a smooth multiplicative bias field (+-10 %, low-frequency cosines)
   and Rician noise with sigma = 2 % of the 99th intensity percentile, drawn from a generator seeded
   with 2009. The same input gives the same bytes on every machine.

With one volume the split is by slab along the axial axis (``segbench.data.splits``).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from segbench.data.config import DataError

__all__ = ["BRAIN_CLASS_NAMES", "BRAIN_RULE_VERSION", "template_files", "brain_volume"]

BRAIN_CLASS_NAMES = ["background", "csf", "grey matter", "white matter"]
BRAIN_RULE_VERSION = 1
_TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_MARGIN_IN_PLANE = 4
_MARGIN_SLICES = 1


def template_files() -> dict[str, Path]:
    """Paths of the T1, grey-matter and white-matter template files inside the nilearn package."""
    spec = importlib.util.find_spec("nilearn")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the built-in brain-mri dataset reads the MNI152 template shipped with nilearn: pip install nilearn")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    files = {kind: folder / _TEMPLATE.format(kind) for kind in ("t1", "gm", "wm")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DataError(f"the MNI152 template files are missing from the nilearn install: {', '.join(missing)}")
    return files


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        image = nib.load(str(path))
        return np.asarray(image.dataobj, dtype=np.float32), np.asarray(image.affine)
    except Exception as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def _pool2(volume: np.ndarray) -> np.ndarray:
    x, y, z = (s // 2 * 2 for s in volume.shape)
    return volume[:x, :y, :z].reshape(x // 2, 2, y // 2, 2, z // 2, 2).mean(axis=(1, 3, 5))


def _labels(grey: np.ndarray, white: np.ndarray) -> np.ndarray:
    mask = grey + white > 0.5
    mask = ndimage.binary_closing(mask, structure=ndimage.generate_binary_structure(3, 1), iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    components, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        mask = components == sizes.argmax()
    csf = np.clip(1.0 - grey - white, 0.0, 1.0)
    tissue = 1 + np.argmax(np.stack([csf, grey, white]), axis=0)
    return np.where(mask, tissue, 0).astype(np.uint8)


def _realism(t1: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(2009)
    grids = np.meshgrid(*(np.linspace(0.0, np.pi, s) for s in t1.shape), indexing="ij")
    field = sum(rng.uniform(-1, 1) * np.cos(rng.integers(1, 3) * g + rng.uniform(0, np.pi)) for g in grids)
    field = np.exp(0.1 * field / 3.0)  # |field exponent| <= 0.1
    sigma = 0.02 * np.percentile(t1[t1 > 0], 99)
    noisy = np.hypot(t1 * field + rng.normal(0, sigma, t1.shape), rng.normal(0, sigma, t1.shape))
    return noisy.astype(np.float32)


@lru_cache(maxsize=1)
def brain_volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T1 float32, labels uint8, affine) of the built-in dataset, in RAS+ voxel order (the template's)."""
    files = template_files()
    t1, affine = _read(files["t1"])
    grey, _ = _read(files["gm"])
    white, _ = _read(files["wm"])
    t1, grey, white = _pool2(t1), _pool2(grey / 255.0), _pool2(white / 255.0)
    labels = _labels(grey, white)
    inside = np.argwhere(labels > 0)
    margin = np.array([_MARGIN_IN_PLANE, _MARGIN_IN_PLANE, _MARGIN_SLICES])
    start = np.maximum(inside.min(axis=0) - margin, 0)
    stop = np.minimum(inside.max(axis=0) + 1 + margin, labels.shape)
    crop = tuple(slice(a, b) for a, b in zip(start, stop))
    t1, labels = _realism(t1[crop]), labels[crop]
    # Voxel i of the 2 mm grid averages 1 mm voxels 2i and 2i + 1: its centre is at 2i + 0.5.
    to_1mm = np.diag([2.0, 2.0, 2.0, 1.0])
    to_1mm[:3, 3] = 2.0 * start + 0.5
    return t1, labels, affine @ to_1mm
