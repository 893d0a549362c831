"""Surface-distance figures of two binary masks: HD95 and NSD, in pixels or in mm.

- HD95, MedPy's ``hd95``: the 95th percentile of the distances from every surface point of either
  mask to the nearest surface point of the other, both directions pooled into one set. (MONAI's
  ``compute_hausdorff_distance(percentile=95)`` takes the larger of the two directed 95th percentiles
  instead, which is never smaller.)
- NSD, the normalised surface distance or surface Dice at tolerance tau (Nikolov et al. 2021): the
  fraction of the surface points of both masks within tau of the other mask's surface,
  (|{p in S_P : d(p, S_R) <= tau}| + |{q in S_R : d(q, S_P) <= tau}|) / (|S_P| + |S_R|).
  Surface points are counted, as MONAI's ``compute_surface_dice`` does (``use_subvoxels=False``);
  DeepMind's ``surface-distance`` weights each surface element by its area instead.

A surface point is a foreground voxel with a face-neighbour in the background or beyond the array
border. Distances are Euclidean between voxel centres (``scipy.ndimage.distance_transform_edt`` with
``sampling=spacing``): in the unit of ``spacing`` (mm for NIfTI volumes), in pixels without one.

Empty masks: both empty -> NaN for both figures (undefined); exactly one empty (a missed or an
invented structure) -> NSD 0 and HD95 the worst case, ``worst_case_distance``: the diagonal of the
array's extent, sqrt(sum_i (shape_i * spacing_i)^2).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["worst_case_distance", "surface_scores", "hd95", "nsd"]


def _surface(mask: np.ndarray) -> np.ndarray:
    # Foreground voxels with at least one face-neighbour in the background (or on the array border).
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _sampling(spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(s > 0 for s in spacing):
        raise ValueError(f"spacing {spacing} does not fit a {ndim}D array (one positive size per axis)")
    return spacing


def worst_case_distance(shape: tuple[int, ...], spacing=None) -> float:
    """The HD95 of a missed or invented structure: the diagonal of the array's extent,
    sqrt(sum_i (shape_i * spacing_i)^2), in the unit of ``spacing`` (pixels without one)."""
    sampling = _sampling(spacing, len(shape))
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, sampling))))


def surface_scores(pred: np.ndarray, target: np.ndarray, tolerance: float = 1.0, spacing=None) -> tuple[float, float]:
    """(HD95, NSD at ``tolerance``) of two binary masks, with the empty-mask rules above.

    One pair of distance transforms serves both figures. ``spacing``: voxel size per array axis
    (distances and ``tolerance`` in its unit); None: pixels."""
    pred, target = pred.astype(bool), target.astype(bool)
    sampling = _sampling(spacing, pred.ndim)
    if not pred.any() and not target.any():
        return float("nan"), float("nan")
    if not pred.any() or not target.any():
        return worst_case_distance(pred.shape, sampling), 0.0
    pred_surface, target_surface = _surface(pred), _surface(target)
    to_target = ndimage.distance_transform_edt(~target_surface, sampling=sampling)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)[target_surface]
    pooled = np.concatenate([to_target, to_pred])
    return float(np.percentile(pooled, 95)), float((pooled <= tolerance).sum() / pooled.size)


def hd95(pred: np.ndarray, target: np.ndarray, spacing=None) -> float:
    """95th-percentile symmetric Hausdorff distance, MedPy's pooled definition; NaN when both masks
    are empty, the array's diagonal when one is."""
    return surface_scores(pred, target, spacing=spacing)[0]


def nsd(pred: np.ndarray, target: np.ndarray, tolerance: float = 1.0, spacing=None) -> float:
    """Normalised surface distance (surface Dice) at ``tolerance``, counting surface points; NaN when
    both masks are empty, 0 when one is."""
    return surface_scores(pred, target, tolerance, spacing)[1]
