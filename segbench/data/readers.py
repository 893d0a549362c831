"""Per-case readers for the cache builder: 2D files, NIfTI volumes, and the built-in brain.

Each reader turns one ``CaseFiles`` into stacks of slices: masks as stored values ``(S, H, W)``
(colour masks packed to int32 codes), images as ``(S, C, H, W)``, and says the stack's voxel size
(``spacing``: mm per (slice, row, column) for volumes, None for 2D images, measured in pixels).
``probe`` checks geometry from the headers only, so a size mismatch is reported before any image is
decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel import orientations

from segbench.data import brain, imageio, volumes
from segbench.data.config import DataConfig, DataError
from segbench.data.labels import MaskSummary, pack_colours
from segbench.data.layouts import CaseFiles

__all__ = ["Probe", "ImageReader2D", "VolumeReader", "BrainReader", "finite"]


def finite(array: np.ndarray, path, cfg: DataConfig) -> np.ndarray:
    """``array`` when every value is finite; else the values replaced by ``cfg.replace_nonfinite``, or DataError.

    One NaN voxel turns a volume's percentiles, and then every normalised voxel, into NaN; training
    would then stop with a NaN loss that names no file."""
    if not np.issubdtype(array.dtype, np.floating):
        return array
    bad = ~np.isfinite(array)
    count = int(bad.sum())
    if count == 0:
        return array
    if cfg.replace_nonfinite is None:
        raise DataError(
            f"image {path} holds {count} non-finite value(s) (NaN/inf) of {array.size}; fix the file, or set "
            "data.replace_nonfinite=VALUE (segbench check --replace-nonfinite VALUE) to replace them"
        )
    return np.where(bad, np.float32(cfg.replace_nonfinite), array).astype(array.dtype, copy=False)


@dataclass
class Probe:
    channels: int
    dtype: str


class ImageReader2D:
    """PNG / JPEG / TIFF / BMP pairs; several files per case are stacked as channels."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.notices: list[str] = []

    def mask(self, case: CaseFiles) -> tuple[np.ndarray, MaskSummary]:
        if case.mask.suffix.lower() in (".jpg", ".jpeg") and not self.notices:
            self.notices.append(f"masks are JPEG files (e.g. {case.mask}): lossy compression alters label values at edges; store masks as PNG")
        array, palette = imageio.read_mask(case.mask)
        colour = array.ndim == 3
        codes = pack_colours(array) if colour else array
        return codes[None], MaskSummary(case.mask, *np.unique(codes, return_counts=True), colour, palette)

    def probe(self, case: CaseFiles, mask_shape: tuple[int, ...]) -> Probe:
        size = tuple(mask_shape[-2:])
        channels, dtypes = 0, []
        for path in case.images:
            info = imageio.probe_image(path)
            if info.size != size:
                raise DataError(
                    f"size mismatch: image {path} is {info.size[0]}x{info.size[1]} (HxW) but mask {case.mask} is {size[0]}x{size[1]}"
                )
            channels += info.channels
            dtypes.append(info.dtype)
        return Probe(channels, np.result_type(*dtypes).name)

    def image(self, case: CaseFiles, channels: int, dtype: str) -> np.ndarray:
        image = np.concatenate([finite(imageio.read_image(p), p, self.cfg) for p in case.images], axis=0)
        if image.shape[0] == 1 and channels == 3:
            image = np.repeat(image, 3, axis=0)  # grey among RGB images
        return image.astype(dtype, copy=False)[None]

    def spacing(self, case: CaseFiles) -> None:
        return None  # 2D images carry no physical pixel size we trust: distances stay in pixels


# How far apart (in voxels) an image and its label may place their voxels without a word: header rounding.
GRID_TOLERANCE = 0.1


def _spatial(shape: tuple[int, ...], affine: np.ndarray) -> tuple[int, ...]:
    """Shape of the first three axes after RAS+ reorientation (header-only: no data read)."""
    return tuple(volumes.to_canonical(np.empty(shape[:3], dtype=np.uint8), affine).shape)


class VolumeReader:
    """NIfTI volumes: RAS+ reorientation, per-volume normalisation (unless disabled), slicing."""

    def __init__(self, cfg: DataConfig, normalize_volumes: bool) -> None:
        self.cfg = cfg
        self.normalize_volumes = normalize_volumes
        self.notices: list[str] = []
        self._affines: dict[str, np.ndarray] = {}
        # Images whose label places its voxels elsewhere: one notice (at this index) names the first, counts all.
        self._misaligned: list[str] = []
        self._misaligned_at: int | None = None

    def mask(self, case: CaseFiles) -> tuple[np.ndarray, MaskSummary]:
        labels, affine, _ = volumes.read_volume(case.mask)
        if labels.ndim == 4 and labels.shape[-1] == 1:
            labels = labels[..., 0]
        if labels.ndim != 3:
            raise DataError(f"label volume {case.mask} has shape {labels.shape}; expected 3D")
        if not np.issubdtype(labels.dtype, np.integer):
            if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
                raise DataError(f"label volume {case.mask} holds non-integer values; labels must be class ids")
            labels = labels.astype(np.int32)
        self._affines[case.case] = affine
        slices = volumes.labels_to_slices(volumes.to_canonical(labels, affine), self.cfg.slice_axis)
        return slices, MaskSummary(case.mask, *np.unique(slices, return_counts=True))

    def spacing(self, case: CaseFiles) -> tuple[float, float, float]:
        """(slice thickness, row, column) in mm of the mask's slices, from the label volume's affine
        (call after ``mask``): the grid the metrics measure on."""
        return volumes.slice_spacing(volumes.canonical_zooms(self._affines[case.case]), self.cfg.slice_axis)

    def probe(self, case: CaseFiles, mask_shape: tuple[int, ...]) -> Probe:
        label_affine = self._affines[case.case]
        expected = volumes.probe_volume(case.mask)[0][:3]
        channels = 0
        for path in case.images:
            shape, affine = volumes.probe_volume(path)
            if _spatial(shape, affine) != _spatial(expected, label_affine):
                raise DataError(f"size mismatch: image {path} has shape {shape} but label {case.mask} has shape {expected}")
            self._check_alignment(path, shape, affine, case.mask, expected, label_affine)
            channels += shape[3] if len(shape) == 4 else 1
        return Probe(channels, "float32")

    def _check_alignment(self, path, shape, affine, mask, mask_shape, mask_affine) -> None:
        """Image and label must describe one voxel grid, to a tolerance relative to the voxel size (a header's
        rounding is no disagreement; at 1 um voxels a 1 um shift is).

        Stored in the same orientation, each label voxel is paired with the image voxel stored at its
        index (a loud warning: a header bug, or a label drawn on another image; refused with ``strict``).
        In another orientation the two are reoriented differently, so a disagreement misaligns them: refused."""
        offset = volumes.grid_offset(shape, affine, mask_shape, mask_affine)
        if offset <= GRID_TOLERANCE:
            return
        codes = ["".join(orientations.aff2axcodes(a)) for a in (affine, mask_affine)]
        where = (f"image {path} and label {mask} disagree on where their voxels are: their affines place the voxels "
                 f"segbench pairs up to {offset:.3g} voxel(s) apart")
        if codes[0] != codes[1]:
            raise DataError(f"{where}, and they are stored in different orientations ({codes[0]} and {codes[1]}), so "
                            "reading each in RAS+ order would misalign them. Give the label the image's affine (if it "
                            "was drawn on this image) or resample it onto the image's grid")
        message = (f"warning: {where}; each label voxel is paired with the image voxel stored at the same index. "
                   "Check that the label belongs to this image, and give it the image's affine")
        if self.cfg.strict:
            raise DataError(message.removeprefix("warning: "))
        self._misaligned.append(message)
        if self._misaligned_at is None:
            self._misaligned_at = len(self.notices)
            self.notices.append(message)
        else:  # one line for the dataset: the first pair named, the others counted
            self.notices[self._misaligned_at] = f"{self._misaligned[0]} ({len(self._misaligned)} images in all)"

    def image(self, case: CaseFiles, channels: int, dtype: str) -> np.ndarray:
        parts = []
        for path in case.images:
            array, affine, _ = volumes.read_volume(path)
            array = finite(volumes.to_canonical(array, affine).astype(np.float32, copy=False), path, self.cfg)
            if self.normalize_volumes:
                array = volumes.normalize_volume(array)
            parts.append(array[..., None] if array.ndim == 3 else array)
        return volumes.volume_to_slices(np.concatenate(parts, axis=-1), self.cfg.slice_axis)


class BrainReader(VolumeReader):
    """The built-in MNI152 brain (``segbench.data.brain``), already in RAS+ order."""

    def mask(self, case: CaseFiles) -> tuple[np.ndarray, MaskSummary]:
        slices = volumes.labels_to_slices(brain.brain_volume()[1], self.cfg.slice_axis)
        return slices, MaskSummary(case.mask, *np.unique(slices, return_counts=True))

    def probe(self, case: CaseFiles, mask_shape: tuple[int, ...]) -> Probe:
        return Probe(1, "float32")

    def spacing(self, case: CaseFiles) -> tuple[float, float, float]:
        return volumes.slice_spacing(volumes.canonical_zooms(brain.brain_volume()[2]), self.cfg.slice_axis)

    def image(self, case: CaseFiles, channels: int, dtype: str) -> np.ndarray:
        t1 = brain.brain_volume()[0]
        if self.normalize_volumes:
            t1 = volumes.normalize_volume(t1)
        return volumes.volume_to_slices(t1, self.cfg.slice_axis)
