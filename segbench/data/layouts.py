"""Finding the image/mask pairs of each supported layout (see the package docstring for the layouts).

Discovery only lists files and reads ``dataset.json``; it decodes no pixels. It fails early, naming
the file, when an image has no mask or a stem is ambiguous.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from segbench.data.config import DataConfig, DataError
from segbench.data.imageio import IMAGE_EXTENSIONS
from segbench.data.volumes import is_nifti, nifti_stem

__all__ = ["CaseFiles", "Source", "discover", "detect_format"]

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MASK_DIRS = ("masks", "labels", "annotations")
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class CaseFiles:
    case: str  # image stem or volume id, unique in the dataset
    images: tuple[Path, ...]  # one file per channel group (nnU-Net _0000, _0001, ...); usually one
    mask: Path
    split: str | None = None  # from the folder layout; None: decided by segbench.data.splits


@dataclass
class Source:
    name: str
    format: str  # folder | nifti | nnunet | mmseg | builtin
    root: str
    volumetric: bool
    cases: list[CaseFiles]
    num_classes: int | None = None  # from dataset.json
    class_names: list[str] | None = None
    ignore_values: tuple[int, ...] = ()  # raw mask values meaning "ignore" (nnU-Net's "ignore" label)
    notices: list[str] = field(default_factory=list)
    extra_files: tuple[Path, ...] = ()  # further inputs whose change must invalidate the cache


def _files(folder: Path, volumetric: bool | None = None) -> list[Path]:
    def wanted(p: Path) -> bool:
        if not p.is_file() or p.name.startswith("."):
            return False
        nifti, image = is_nifti(p), p.suffix.lower() in IMAGE_EXTENSIONS
        return nifti if volumetric else image if volumetric is False else nifti or image

    return sorted(p for p in folder.iterdir() if wanted(p))


def _stem(path: Path, suffix: str) -> str:
    stem = nifti_stem(path) if is_nifti(path) else path.stem
    return stem[: -len(suffix)] if suffix and stem.endswith(suffix) else stem


def _by_stem(paths: list[Path], suffix: str, what: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in paths:
        stem = _stem(path, suffix)
        if stem in found:
            raise DataError(f"two {what} files share the stem {stem!r}: {found[stem]} and {path}; keep one")
        found[stem] = path
    return found


def _group_channels(images: dict[str, Path]) -> dict[str, tuple[Path, ...]] | None:
    """{'a_0000': p0, 'a_0001': p1} -> {'a': (p0, p1)}; None unless every stem ends in a 4-digit channel id."""
    matches = {stem: _CHANNEL_SUFFIX.match(stem) for stem in images}
    if not images or not all(matches.values()):
        return None
    groups: dict[str, dict[int, Path]] = {}
    for stem, match in matches.items():
        groups.setdefault(match["case"], {})[int(match["channel"])] = images[stem]
    count = max(len(g) for g in groups.values())
    for case, channels in groups.items():
        if sorted(channels) != list(range(count)):
            raise DataError(f"case {case!r} has channel files {sorted(channels)}; every case needs channels 0..{count - 1}")
    return {case: tuple(channels[c] for c in range(count)) for case, channels in groups.items()}


def _pair(image_dir: Path, mask_dir: Path, split: str | None, cfg: DataConfig, notices: list[str]) -> list[CaseFiles]:
    stems = _by_stem(_files(image_dir), cfg.image_suffix, "image")
    if not stems:
        what = f"the {split} split folder " if split else ""
        raise DataError(f"{what}{image_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}, .nii, .nii.gz)")
    masks = _by_stem(_files(mask_dir), cfg.mask_suffix, "mask")
    images = {stem: (path,) for stem, path in stems.items()}
    if any(stem not in masks for stem in stems):
        # nnU-Net-style channel files (case_0000, case_0001) pair with the mask "case".
        grouped = _group_channels(stems)
        if grouped is not None and all(case in masks for case in grouped):
            images = grouped
    missing = [paths[0] for case, paths in images.items() if case not in masks]
    if missing:
        shown = ", ".join(str(p) for p in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DataError(f"no mask in {mask_dir} for {len(missing)} image(s): {shown} (masks are matched by file stem)")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        notices.append(f"{len(orphans)} mask(s) in {mask_dir} have no image and are ignored, e.g. {masks[orphans[0]].name}")
    return [CaseFiles(case, paths, masks[case], split) for case, paths in sorted(images.items())]


def _mask_dir(parent: Path) -> Path | None:
    return next((parent / name for name in MASK_DIRS if (parent / name).is_dir()), None)


def _split_dirs(folder: Path) -> dict[str, Path]:
    return {SPLIT_NAMES[p.name.lower()]: p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.lower() in SPLIT_NAMES}


def _pairs_layout(root: Path, cfg: DataConfig, notices: list[str]) -> list[CaseFiles]:
    """folder/nifti: images/ + masks/, images/<split>/ + masks/<split>/, or <split>/images/ + <split>/masks/."""
    if (root / "imagesTr").is_dir():
        cases = _pair(root / "imagesTr", _required(root, "labelsTr"), None, cfg, notices)
        if (root / "imagesTs").is_dir() and (root / "labelsTs").is_dir():
            cases += _pair(root / "imagesTs", root / "labelsTs", "test", cfg, notices)
            cases = [c if c.split else CaseFiles(c.case, c.images, c.mask, "train") for c in cases]
        return cases
    if (root / "images").is_dir():
        mask_dir = _mask_dir(root)
        if mask_dir is None:
            raise DataError(f"{root} has images/ but no masks/ (or {', '.join(MASK_DIRS[1:])}) folder beside it")
        image_splits = _split_dirs(root / "images")
        if image_splits:
            return _pair_splits(image_splits, mask_dir, cfg, notices)
        return _pair(root / "images", mask_dir, None, cfg, notices)
    splits = {s: p for s, p in _split_dirs(root).items() if (p / "images").is_dir()}
    if splits:
        cases = []
        for split, folder in splits.items():
            mask_dir = _mask_dir(folder)
            if mask_dir is None:
                raise DataError(f"{folder / 'images'} has no masks/ folder beside it")
            cases += _pair(folder / "images", mask_dir, split, cfg, notices)
        return cases
    raise _unknown_layout(root)


def _pair_splits(image_splits: dict[str, Path], mask_root: Path, cfg: DataConfig, notices: list[str]) -> list[CaseFiles]:
    """Pair each split folder of images with the same-named split folder under ``mask_root``."""
    mask_splits = _split_dirs(mask_root)
    cases = []
    for split, folder in image_splits.items():
        if split not in mask_splits:
            raise DataError(f"{folder} has no matching {mask_root / folder.name} folder")
        cases += _pair(folder, mask_splits[split], split, cfg, notices)
    return cases


def _required(root: Path, name: str) -> Path:
    if not (root / name).is_dir():
        raise DataError(f"{root} has no {name}/ folder")
    return root / name


def _unknown_layout(root: Path) -> DataError:
    seen = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:12]) or "nothing"
    return DataError(
        f"cannot tell the layout of {root} (found: {seen}). Supported: images/ + masks/ (optionally with "
        "train/ val/ test/ inside, or train/images/ ...), imagesTr/ + labelsTr/ (NIfTI), nnU-Net "
        "(dataset.json + imagesTr/ + labelsTr/), MMSegmentation (img_dir/<split>/ + ann_dir/<split>/)"
    )


def detect_format(root: Path) -> str:
    if (root / "dataset.json").is_file():
        return "nnunet"
    if (root / "img_dir").is_dir() and (root / "ann_dir").is_dir():
        return "mmseg"
    candidates = [root / "imagesTr", root / "images"] + [root / s / "images" for s in SPLIT_NAMES]
    for folder in candidates:
        if folder.is_dir():
            first = next((p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")), None)
            return "nifti" if first is not None and is_nifti(first) else "folder"
    raise _unknown_layout(root)


def _mmseg(root: Path, cfg: DataConfig, notices: list[str]) -> list[CaseFiles]:
    image_splits = _split_dirs(_required(root, "img_dir"))
    if not image_splits:
        raise DataError(f"{root / 'img_dir'} has no train/ val/ test/ folders (MMSegmentation layout)")
    return _pair_splits(image_splits, _required(root, "ann_dir"), cfg, notices)


def _nnunet_labels(labels: dict, path: Path) -> tuple[list[str], int, tuple[int, ...]]:
    """v2 {"background": 0, ...} or v1/MSD {"0": "background", ...} -> (names, num_classes, ignore values)."""
    if all(isinstance(k, str) and k.isdigit() for k in labels) and all(isinstance(v, str) for v in labels.values()):
        labels = {name: int(value) for value, name in labels.items()}
    regions = [name for name, value in labels.items() if not isinstance(value, int)]
    if regions:
        raise DataError(f"{path}: region-based labels ({', '.join(regions)}) are not supported; give one integer per label")
    ignore = tuple(value for name, value in labels.items() if name.lower() == "ignore")
    classes = {value: name for name, value in labels.items() if name.lower() != "ignore"}
    if sorted(classes) != list(range(len(classes))):
        raise DataError(f"{path}: label values must be 0..{len(classes) - 1} (plus 'ignore'), got {sorted(classes)}")
    return [classes[v] for v in range(len(classes))], len(classes), ignore


def _nnunet(root: Path, cfg: DataConfig, notices: list[str]) -> tuple[list[CaseFiles], dict]:
    path = root / "dataset.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if "labels" not in meta:
        raise DataError(f"{path} has no 'labels' entry")
    names, num_classes, ignore = _nnunet_labels(meta["labels"], path)
    image_dir, label_dir = _required(root, "imagesTr"), _required(root, "labelsTr")
    channels = meta.get("channel_names", meta.get("modality"))
    ending = meta.get("file_ending")
    if ending is None:  # Medical Segmentation Decathlon: 4D images, channels last
        cases = _pair(image_dir, label_dir, None, cfg, notices)
    else:
        if not channels:
            raise DataError(f"{path} has no 'channel_names' entry")
        cases = []
        for label in sorted(label_dir.glob(f"*{ending}")):
            case = label.name[: -len(ending)]
            files = tuple(image_dir / f"{case}_{int(c):04d}{ending}" for c in sorted(channels, key=int))
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise DataError(f"case {case!r} ({label}) is missing image file(s): {', '.join(missing)}")
            cases.append(CaseFiles(case, files, label))
        images = {p.name for p in image_dir.glob(f"*{ending}")}
        orphans = images - {f.name for c in cases for f in c.images}
        if orphans:
            raise DataError(f"no label in {label_dir} for image(s) {', '.join(sorted(orphans)[:10])}")
        if "numTraining" in meta and meta["numTraining"] != len(cases):
            notices.append(f"{path} says numTraining={meta['numTraining']} but {len(cases)} labelled cases were found")
    return cases, {"class_names": names, "num_classes": num_classes, "ignore_values": ignore, "ending": ending}


def discover(cfg: DataConfig) -> Source:
    """The image/mask pairs of ``cfg.source`` (a directory; built-ins are handled by the pipeline)."""
    root = Path(cfg.source).expanduser()
    if not root.is_dir():
        raise DataError(f"data source {cfg.source!r} is neither a built-in dataset (brain-mri) nor a directory")
    fmt = detect_format(root) if cfg.format == "auto" else cfg.format
    notices: list[str] = []
    extra: dict = {}
    if fmt == "nnunet":
        cases, extra = _nnunet(root, cfg, notices)
    elif fmt == "mmseg":
        cases = _mmseg(root, cfg, notices)
    else:
        cases = _pairs_layout(root, cfg, notices)
    if not cases:
        raise DataError(f"no image/mask pairs found under {root}")
    if len({c.case for c in cases}) < len(cases):  # e.g. 0001.png in both train/ and val/
        cases = [CaseFiles(f"{c.split}/{c.case}", c.images, c.mask, c.split) for c in cases]
    volumetric = is_nifti(cases[0].images[0])
    kinds = {is_nifti(p) for c in cases for p in (*c.images, c.mask)}
    if len(kinds) > 1:
        raise DataError(f"{root} mixes NIfTI volumes and 2D images; keep one kind per dataset")
    if fmt == "folder" and volumetric:
        fmt = "nifti"
    if fmt == "nifti" and not volumetric:
        raise DataError(f"format 'nifti' was asked for but {cases[0].images[0]} is not a .nii/.nii.gz file")
    return Source(
        name=root.resolve().name,
        format=fmt,
        root=str(root),
        volumetric=volumetric,
        cases=cases,
        num_classes=extra.get("num_classes"),
        class_names=extra.get("class_names"),
        ignore_values=extra.get("ignore_values", ()),
        notices=notices,
        extra_files=(root / "dataset.json",) if fmt == "nnunet" else (),
    )
