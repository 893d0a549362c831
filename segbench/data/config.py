"""The data layer's configuration: two frozen dataclasses and the one error type.

Every option has a default that works on a plain ``images/`` + ``masks/`` folder. YAML loaders may
pass lists where a tuple is expected; ``__post_init__`` turns them into tuples and checks ranges,
so a bad value fails here with the valid range instead of deep inside a DataLoader worker.
"""

from __future__ import annotations

import re

from dataclasses import dataclass, field

__all__ = ["AugmentConfig", "DataConfig", "DataError", "FORMATS", "NORMALIZATIONS"]

FORMATS = ("auto", "folder", "nifti", "nnunet", "mmseg")
# auto: per-volume percentile z-score for volumes; ImageNet mean/std for 8-bit RGB; otherwise the
# train split's per-channel mean/std. See segbench.data.dataset.Normalization.
NORMALIZATIONS = ("auto", "dataset", "imagenet", "volume", "none")


class DataError(ValueError):
    """Bad input data (not a bad option). The message names the file(s) and the offending values."""


def _pair(value, name: str, kind=float):
    if value is None:
        return None
    value = tuple(kind(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{name} must have two values, got {value}")
    return value


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)  # frozen dataclass: normalise in __post_init__ only


@dataclass(frozen=True)
class AugmentConfig:
    """Joint image/mask augmentation of the train split (segbench.data.augment). Val/test never augment."""

    crop_size: tuple[int, int] | None = None  # random crop (padding when smaller) to this H x W; None: keep size
    scale: tuple[float, float] = (0.75, 1.25)  # random rescale factor range; (1, 1) disables
    hflip: float = 0.5  # probability of a left-right flip
    vflip: float = 0.0  # probability of an up-down flip (off: most scenes have a gravity direction)
    rotate: float = 15.0  # max absolute rotation in degrees, uniform in [-rotate, rotate]
    gamma: tuple[float, float] = (0.8, 1.25)  # gamma range, applied to the image rescaled to [0, 1]
    intensity: float = 0.1  # image * (1 + a) + b with a, b uniform in [-intensity, intensity]
    noise_std: float = 0.02  # std of additive Gaussian noise (normalised image units)
    enabled: bool = True  # False: the train split is served like val (no augmentation at all)

    def __post_init__(self) -> None:
        _set(self, "crop_size", _pair(self.crop_size, "crop_size", int))
        _set(self, "scale", _pair(self.scale, "scale"))
        _set(self, "gamma", _pair(self.gamma, "gamma"))
        if self.crop_size is not None and min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be positive, got {self.crop_size}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must satisfy 0 < low <= high, got {self.scale}")
        if not 0 < self.gamma[0] <= self.gamma[1]:
            raise ValueError(f"gamma must satisfy 0 < low <= high, got {self.gamma}")
        for name in ("hflip", "vflip"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        for name in ("rotate", "intensity", "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class DataConfig:
    """Where the data is, how it is read, checked, split and cached. See docs in segbench/data/__init__.py."""

    source: str = "brain-mri"  # a built-in dataset name ("brain-mri") or a directory
    format: str = "auto"  # auto | folder | nifti | nnunet | mmseg (auto: detected from the layout)
    num_classes: int | None = None  # None: from dataset.json / the palette / the largest label + 1
    class_names: tuple[str, ...] | None = None  # None: from dataset.json, else "background", "class_1", ...
    ignore_index: int = 255  # mask value excluded from loss and metrics; also fills padding
    val_fraction: float = 0.2  # share of cases (volumes, or images) held out for validation
    test_fraction: float = 0.0  # share of cases held out for the final test; 0: no test split
    seed: int = 0  # seeds the split, the empty-slice subsampling and every augmentation draw
    split_file: str | None = None  # JSON/YAML {"train": [case ids], "val": [...], "test": [...]}
    folds: int = 0  # cross-validation: K >= 2 folds over cases (groups, slabs of a lone volume); 0: one split
    fold: int = 0  # which fold is the validation split (0 .. folds - 1)
    group_pattern: str | None = None  # regex whose first group names a case's group (patient): one group, one fold
    slice_axis: int = 2  # volumes: the axis (after reorienting to RAS+) cut into 2D slices; 2 = axial
    keep_empty_slices: float = 0.5  # volumes: share of train slices without foreground kept, redrawn each epoch
    slab_gap: int = 2  # one-volume split: slices dropped between slabs of different splits (no neighbours leak)
    resize: tuple[int, int] | None = None  # resize every image / volume slice to H x W; None: native size
    normalize: str = "auto"  # auto | dataset | imagenet | volume | none (see NORMALIZATIONS above)
    reduce_zero_label: bool = False  # MMSeg convention: label 0 -> ignore, k -> k - 1
    strict: bool = False  # refuse to guess: 0/255 masks, inferred palettes, cases left out of a split file
    palette: tuple[tuple[int, int, int], ...] | None = None  # RGB masks: colour of class k at position k
    image_suffix: str = ""  # stripped from image stems before pairing (e.g. "_leftImg8bit")
    mask_suffix: str = ""  # stripped from mask stems before pairing (e.g. "_gtFine_labelTrainIds")
    cache_dir: str | None = None  # None: $SEGBENCH_HOME/cache, else ~/.cache/segbench/cache
    replace_nonfinite: float | None = None  # None: a NaN/inf image value is an error; else the value put in its place
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            _set(self, "augment", AugmentConfig(**self.augment))
        _set(self, "resize", _pair(self.resize, "resize", int))
        if self.class_names is not None:
            _set(self, "class_names", tuple(str(n) for n in self.class_names))
        if self.palette is not None:
            palette = tuple(tuple(int(c) for c in colour) for colour in self.palette)
            if any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in palette):
                raise ValueError(f"palette must be a list of [r, g, b] triples in 0..255, got {self.palette}")
            _set(self, "palette", palette)
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {self.format!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}; got {self.normalize!r}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.num_classes is not None and 0 <= self.ignore_index < self.num_classes:
            raise ValueError(f"ignore_index {self.ignore_index} is a class id (num_classes={self.num_classes})")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError(
                f"val_fraction and test_fraction must be in [0, 1) and sum below 1, got {self.val_fraction}, {self.test_fraction}"
            )
        if self.slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {self.slice_axis}")
        if not 0.0 <= self.keep_empty_slices <= 1.0:
            raise ValueError(f"keep_empty_slices is a fraction in [0, 1], got {self.keep_empty_slices}")
        if self.slab_gap < 0:
            raise ValueError(f"slab_gap must be >= 0, got {self.slab_gap}")
        if self.folds == 1 or self.folds < 0 or (self.folds and not 0 <= self.fold < self.folds):
            raise ValueError(f"folds must be 0 (one split) or >= 2 with 0 <= fold < folds, got folds={self.folds}, fold={self.fold}")
        if self.group_pattern is not None:
            try:
                if re.compile(self.group_pattern).groups < 1:
                    raise ValueError(f"group_pattern {self.group_pattern!r} needs a (group) naming the case's group")
            except re.error as err:
                raise ValueError(f"group_pattern {self.group_pattern!r} is not a regular expression: {err}") from None
        if self.resize is not None and min(self.resize) < 1:
            raise ValueError(f"resize must be positive, got {self.resize}")
