"""NIfTI volumes: reading, RAS+ reorientation, voxel spacing, per-volume normalisation, slicing and the way back.

Training sees a volume as slices along ``slice_axis`` of the volume reoriented to RAS+ (so axis 2 is
axial whatever the scanner stored). ``prepare_volume`` / ``restore_volume`` repeat exactly that for
``segbench predict`` and undo it, so predicted label maps are written in the input's own voxel grid
with the input's affine and header. ``canonical_zooms`` / ``slice_spacing`` give the voxel size (mm)
of the reoriented volume and of its stack of slices, so surface distances can be measured in mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations

from segbench.data.config import DataError
from segbench.data.geometry import resize_images, resize_labels

__all__ = [
    "NIFTI_SUFFIXES",
    "nifti_stem",
    "is_nifti",
    "read_volume",
    "probe_volume",
    "to_canonical",
    "from_canonical",
    "canonical_zooms",
    "grid_offset",
    "slice_spacing",
    "normalize_volume",
    "volume_to_slices",
    "labels_to_slices",
    "slices_to_volume",
    "PreparedVolume",
    "prepare_volume",
    "restore_volume",
    "write_labels",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
CLIP_PERCENTILES = (0.5, 99.5)


def is_nifti(path: str | Path) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | Path) -> str:
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def _load(path: Path) -> nib.Nifti1Image:
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for bad headers
        raise DataError(f"cannot read {path}: {exc}") from None


def probe_volume(path: str | Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine from the header only."""
    image = _load(Path(path))
    return tuple(int(s) for s in image.shape), np.asarray(image.affine)


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """(array in stored voxel order, affine, header). Scaled data (scl_slope) comes back as float."""
    path = Path(path)
    image = _load(path)
    try:
        array = np.asanyarray(image.dataobj)
    except Exception as exc:  # truncated gzip stream, short file, ...
        raise DataError(f"cannot read {path}: {exc}") from None
    if array.ndim not in (3, 4):
        raise DataError(f"{path} has {array.ndim} dimensions {array.shape}; expected a 3D volume (4D: channels last)")
    return array, np.asarray(image.affine), image.header


def _canonical_transform(affine: np.ndarray) -> np.ndarray:
    return orientations.ornt_transform(orientations.io_orientation(affine), orientations.axcodes2ornt("RAS"))


def to_canonical(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorder/flip the first three axes to RAS+ (a pure permutation: no resampling)."""
    return orientations.apply_orientation(array, _canonical_transform(affine))


def canonical_zooms(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along each axis of ``to_canonical``'s output: the stored axes' sizes, permuted
    as the axes are. Sizes come from the affine (the length of each voxel axis in world space), the
    matrix the reorientation follows. For a header whose pixdim agrees with its affine (as nibabel
    writes them) they equal nibabel's ``as_closest_canonical(image).header.get_zooms()``."""
    sizes = np.sqrt(np.square(np.asarray(affine, dtype=np.float64)[:3, :3]).sum(axis=0))
    zooms = [0.0, 0.0, 0.0]
    for stored_axis, (canonical_axis, _flip) in enumerate(_canonical_transform(affine)):
        zooms[int(canonical_axis)] = float(sizes[stored_axis])
    return zooms[0], zooms[1], zooms[2]


def _canonical_affine(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The affine of ``to_canonical``'s output for a stored volume of ``shape``."""
    return np.asarray(affine, dtype=np.float64) @ orientations.inv_ornt_aff(_canonical_transform(affine), shape[:3])


def grid_offset(image_shape: tuple[int, ...], image_affine: np.ndarray, label_shape: tuple[int, ...],
                label_affine: np.ndarray) -> float:
    """How far apart (in the image's smallest voxel size) an image and its label place the voxels segbench
    pairs: voxel (i, j, k) of each volume reoriented to RAS+. The largest world distance over the grid's
    corners, so a shift, a scale, a rotation and a flip all count; 0 when the two describe one grid."""
    image, label = _canonical_affine(image_shape, image_affine), _canonical_affine(label_shape, label_affine)
    size = to_canonical(np.empty(image_shape[:3], dtype=np.uint8), image_affine).shape
    corners = np.array([[i, j, k, 1.0] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    distance = np.linalg.norm(((image - label) @ corners.T)[:3], axis=0).max()
    return float(distance / max(min(canonical_zooms(image_affine)), 1e-12))


def slice_spacing(zooms: tuple[float, float, float], slice_axis: int) -> tuple[float, float, float]:
    """Voxel size of ``labels_to_slices``'s (S, H, W) stack of a canonical volume: (slice thickness,
    row, column), the order the metrics stack a case's slices in."""
    in_plane = [float(z) for axis, z in enumerate(zooms) if axis != slice_axis]
    return float(zooms[slice_axis]), in_plane[0], in_plane[1]


def from_canonical(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of ``to_canonical`` for the volume whose affine is ``affine``."""
    transform = orientations.ornt_transform(orientations.axcodes2ornt("RAS"), orientations.io_orientation(affine))
    return orientations.apply_orientation(array, transform)


def normalize_volume(array: np.ndarray) -> np.ndarray:
    """Per channel: clip to the 0.5/99.5 percentiles, then z-score, both over the non-zero voxels
    (zero is the air/padding outside the body in MRI; all voxels are used when none is non-zero).
    Channels are on the last axis of 4D arrays. Returns float32."""
    array = np.asarray(array, dtype=np.float32)
    channels = array[..., None] if array.ndim == 3 else array
    out = np.empty_like(channels)
    for c in range(channels.shape[-1]):
        channel = channels[..., c]
        values = channel[channel != 0]
        if values.size == 0:
            values = channel.ravel()
        low, high = np.percentile(values, CLIP_PERCENTILES)
        clipped_values = np.clip(values, low, high)
        mean, std = float(clipped_values.mean()), float(clipped_values.std())
        out[..., c] = (np.clip(channel, low, high) - mean) / max(std, 1e-6)
    return out[..., 0] if array.ndim == 3 else out


def volume_to_slices(volume: np.ndarray, slice_axis: int) -> np.ndarray:
    """(X, Y, Z) or (X, Y, Z, C) -> (S, C, H, W), slices along ``slice_axis``."""
    if volume.ndim == 3:
        volume = volume[..., None]
    slices = np.moveaxis(volume, slice_axis, 0)  # (S, a, b, C)
    return np.ascontiguousarray(np.moveaxis(slices, -1, 1))


def labels_to_slices(labels: np.ndarray, slice_axis: int) -> np.ndarray:
    """(X, Y, Z) -> (S, H, W)."""
    return np.ascontiguousarray(np.moveaxis(labels, slice_axis, 0))


def slices_to_volume(slices: np.ndarray, slice_axis: int) -> np.ndarray:
    """(S, H, W) -> (X, Y, Z), inverse of ``labels_to_slices``."""
    return np.moveaxis(slices, 0, slice_axis)


@dataclass
class PreparedVolume:
    slices: np.ndarray  # (S, C, H, W) float32, normalised and resized as in training
    affine: np.ndarray
    header: nib.Nifti1Header
    canonical_shape: tuple[int, ...]  # shape after RAS+ reorientation (before slicing)
    slice_axis: int


def prepare_volume(
    paths: str | Path | list, slice_axis: int = 2, resize: tuple[int, int] | None = None, zscore: bool = True
) -> PreparedVolume:
    """Read one volume (or one file per channel, nnU-Net style) the way training read it.
    ``zscore=False`` leaves intensities as stored (for data loaded with normalize="dataset"/"none")."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    channels, affine, header = [], None, None
    for path in paths:
        array, file_affine, file_header = read_volume(path)
        if affine is None:
            affine, header = file_affine, file_header
        array = to_canonical(array, file_affine).astype(np.float32, copy=False)
        if zscore:
            array = normalize_volume(array)
        channels.append(array[..., None] if array.ndim == 3 else array)
    volume = np.concatenate(channels, axis=-1)
    slices = volume_to_slices(volume, slice_axis)
    if resize is not None:
        slices = resize_images(slices, resize)
    return PreparedVolume(slices, affine, header, tuple(volume.shape[:3]), slice_axis)


def restore_volume(labels: np.ndarray, prepared: PreparedVolume) -> np.ndarray:
    """Predicted (S, H, W) label slices -> label volume in the input's stored voxel order."""
    in_plane = tuple(np.delete(prepared.canonical_shape, prepared.slice_axis))
    labels = resize_labels(np.asarray(labels), in_plane)
    volume = slices_to_volume(labels, prepared.slice_axis)
    return np.ascontiguousarray(from_canonical(volume, prepared.affine))


def write_labels(labels: np.ndarray, prepared: PreparedVolume, path: str | Path) -> None:
    """Write a label volume (from ``restore_volume``) with the input's affine and header."""
    header = prepared.header.copy()
    header.set_data_dtype(np.uint8 if labels.max(initial=0) < 256 else np.int16)
    header["scl_slope"], header["scl_inter"] = 1.0, 0.0
    nib.save(nib.Nifti1Image(labels.astype(header.get_data_dtype()), prepared.affine, header), str(path))
