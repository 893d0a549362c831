"""Datasets for segbench: find image/mask pairs, check them, cache them, split them, serve them.

``load_data(DataConfig(...))`` returns a ``SegmentationData`` whose ``splits`` are torch Datasets
yielding ``dict(image=FloatTensor[C,H,W] (normalised), mask=LongTensor[H,W], case=str, index=int)``;
``case`` is the image stem or volume id and ``index`` the slice index in that volume (0 for 2D), so
metrics can be computed per image or per volume. Items of volumes also carry ``spacing``: the voxel
size in mm of their case's stacked slices, (slice thickness, row, column), from the NIfTI header after
RAS+ reorientation and scaled by ``resize``; 2D images have no ``spacing`` key (distances in pixels).

Layouts (``format="auto"`` picks the first that matches; DataError lists them when none does):

- folder: ``images/`` + ``masks/`` (or ``labels/``, ``annotations/``) with matching file stems,
  PNG/JPEG/TIFF/BMP, 8/16-bit, grey or RGB. Explicit splits as ``images/{train,val,test}/`` +
  ``masks/{train,val,test}/`` or as ``{train,val,test}/images/`` + ``{train,val,test}/masks/``;
  otherwise ``split_file`` or a seeded split by image.
- nifti: ``imagesTr/`` + ``labelsTr/`` (optional ``imagesTs/`` + ``labelsTs/`` become the test split)
  or ``images/`` + ``labels/`` (or ``masks/``), ``.nii`` / ``.nii.gz``. Volumes are reoriented to
  RAS+, cut into 2D slices along ``slice_axis`` and split by volume; a single volume is split into
  slabs with ``slab_gap`` slices dropped between slabs of different splits. Intensities are
  normalised per volume and channel: clip to the 0.5/99.5 percentiles, then z-score (statistics over
  non-zero voxels, see ``volumes.normalize_volume``). 4D images carry channels on the last axis.
- nnunet: nnU-Net v2 raw layout: ``dataset.json`` (``labels``, ``channel_names``, ``file_ending``),
  ``imagesTr/{case}_{channel:04d}{file_ending}`` (several channels -> C > 1), ``labelsTr/``; 2D
  (``.png``) and 3D (``.nii.gz``). A label named ``ignore`` maps to ``ignore_index``.
- mmseg: ``img_dir/{train,val[,test]}`` + ``ann_dir/{train,val[,test]}`` (use ``reduce_zero_label``
  for ADE20K-style annotations: 0 -> ignore, k -> k - 1).
- built-in ``brain-mri``: see ``segbench.data.brain``.

Geometry and intensities: images keep their native size unless ``resize=(H, W)`` (applied to every
2D image and every volume slice when cached; masks by nearest neighbour); batches of mixed sizes can
use ``segbench.data.dataset.pad_collate``. 2D images are normalised per channel with ImageNet
statistics (8-bit RGB) or the train split's mean/std (anything else); see ``DataConfig.normalize``.
``segbench.data.prepare`` prepares new inputs for ``segbench predict`` the same way.

Checks run by ``load_data`` and ``segbench check``: missing masks, unreadable/truncated files,
image/mask size mismatches, label values outside ``[0, num_classes)`` and not ``ignore_index``,
mask values that fit no reading (ids 0..K-1 with most ids missing, e.g. 0/255 plus stray values),
NaN/inf image values (unless ``replace_nonfinite``), a train split without foreground, empty splits ->
DataError; 0/255 binary masks -> mapped to 0/1, RGB masks without a palette -> palette inferred from
their colours, a val split without foreground -> a notice each (the first two DataError with ``strict``).
Decoded slices are cached as memory-mapped ``.npy`` files keyed by a content hash (``segbench.data.cache``), so only the first load decodes anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch.utils.data import Dataset

from segbench.data.config import AugmentConfig, DataConfig, DataError
from segbench.data.report import DataReport

if TYPE_CHECKING:
    from segbench.data.dataset import Normalization

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "DataError",
    "DataReport",
    "SegmentationData",
    "load_data",
    "BUILTIN_DATASETS",
]

BUILTIN_DATASETS = ("brain-mri",)


@dataclass
class SegmentationData:
    """A loaded, checked dataset: what the engine needs to build a model and train it."""

    name: str
    num_classes: int
    in_channels: int
    class_names: list[str]
    ignore_index: int
    splits: dict[str, Dataset]  # "train", "val", and "test" when present
    notices: list[str]  # what was guessed or mapped, e.g. "masks use 0/255: mapped to 0/1"
    report: DataReport  # class histogram per split etc.; str(report) prints it
    format: str = "folder"  # the layout that was read: folder | nifti | nnunet | mmseg | builtin
    volumetric: bool = False  # True: cases are volumes cut into slices (per-volume metrics apply)
    normalization: "Normalization | None" = None  # apply the same to new images in `segbench predict`
    config: DataConfig = field(default_factory=DataConfig)
    palette: list[tuple[int, int, int]] | None = None  # colour per class for drawing (from the masks if any)


def load_data(cfg: DataConfig) -> SegmentationData:
    """Find, check, cache and split the dataset described by ``cfg``. Raises DataError on bad data."""
    from segbench.data.pipeline import load

    return load(cfg)
