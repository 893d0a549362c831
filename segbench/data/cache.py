"""The decoded-slice cache: every case stored once as memory-mapped ``.npy`` files.

Layout: ``<cache root>/<dataset>-<key>/`` holding ``meta.json`` and, per case ``i``,
``{i:06d}_image.npy`` (S, C, H, W) and ``{i:06d}_mask.npy`` (S, H, W) with class ids. The key hashes
the input files (path, size, modification time) and every option that changes the stored bytes or the
checks (not the split, seed or augmentation: those are applied on top). A build writes into a
temporary folder and renames it into place, so readers never see half a cache and concurrent builds
of the same key are harmless. Later loads decode nothing: slices are read through ``np.load(...,
mmap_mode="r")``, so memory stays bounded by what a batch touches.

Building runs the data checks (``segbench.data.labels``, ``segbench.data.readers``) in two passes:
masks first (their value sets decide the label mapping; headers give the image sizes), then images.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segbench.data.config import DataConfig, DataError
from segbench.data.geometry import resize_images, resize_labels, resized_spacing
from segbench.data.labels import LabelPlan, MaskSummary, plan_labels
from segbench.data.layouts import Source

__all__ = ["CACHE_VERSION", "cache_root", "cache_key", "CacheStore", "open_or_build"]

# 2: label-consistency and non-finite checks (caches built without them are rechecked).
# 3: each case's voxel spacing (mm per slice, row, column of the stored stack; None for 2D images).
CACHE_VERSION = 3
_PROGRESS_MIN_CASES = 20


def cache_root(cfg: DataConfig) -> Path:
    """cfg.cache_dir, else $SEGBENCH_HOME/cache, else ~/.cache/segbench/cache."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    if os.environ.get("SEGBENCH_HOME"):
        return Path(os.environ["SEGBENCH_HOME"]).expanduser() / "cache"
    return Path("~/.cache/segbench/cache").expanduser()


def _fingerprint(path: Path) -> list:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def cache_key(source: Source, cfg: DataConfig, bake_volume_norm: bool, salt: object = None) -> str:
    files = sorted({p for c in source.cases for p in (*c.images, c.mask)} | set(source.extra_files))
    content = {
        "version": CACHE_VERSION,
        "salt": salt,
        "format": source.format,
        "cases": [[c.case, c.split, [str(p) for p in c.images], str(c.mask)] for c in source.cases],
        "files": [_fingerprint(p) for p in files],
        "options": {
            "num_classes": cfg.num_classes,
            "class_names": cfg.class_names,
            "ignore_index": cfg.ignore_index,
            "reduce_zero_label": cfg.reduce_zero_label,
            "strict": cfg.strict,
            "palette": cfg.palette,
            "resize": cfg.resize,
            "slice_axis": cfg.slice_axis if source.volumetric else None,
            "bake_volume_norm": bake_volume_norm,
            "replace_nonfinite": cfg.replace_nonfinite,
        },
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:20]


class CacheStore:
    """Read access to a built cache: per-case slices, memory-mapped and opened lazily per process.

    At most ``MAX_OPEN`` maps stay open (least recently used are closed): each map holds a file
    descriptor, and a dataset of thousands of cases would otherwise exhaust the process's limit.
    """

    MAX_OPEN = 64

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self._arrays: OrderedDict[str, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict:  # DataLoader workers re-open their own maps
        return {"folder": self.folder, "meta": self.meta, "_arrays": OrderedDict()}

    def _array(self, name: str) -> np.ndarray:
        array = self._arrays.get(name)
        if array is None:
            try:
                array = self._arrays[name] = np.load(self.folder / name, mmap_mode="r")
            except (OSError, ValueError, EOFError) as err:  # truncated, emptied or overwritten by something else
                raise DataError(f"cache file {self.folder / name} is damaged ({' '.join(str(err).split())}); delete "
                                f"{self.folder} and it is rebuilt from the data") from None
            while len(self._arrays) > self.MAX_OPEN:
                self._arrays.popitem(last=False)
        else:
            self._arrays.move_to_end(name)
        return array

    def image(self, case: int, index: int) -> np.ndarray:
        """(C, H, W) in the stored dtype (a copy, not a view of the map)."""
        return np.array(self._array(f"{case:06d}_image.npy")[index])

    def mask(self, case: int, index: int) -> np.ndarray:
        return np.array(self._array(f"{case:06d}_mask.npy")[index])


def _named(err: OSError, path: Path) -> OSError:
    """``err`` naming ``path``: a write that fails (a full disk) names no file, so the error would not say which."""
    return err if err.filename else OSError(err.errno, err.strerror or str(err), str(path))


def _save(folder: Path, name: str, array: np.ndarray) -> None:
    try:
        np.save(folder / name, np.ascontiguousarray(array), allow_pickle=False)
    except OSError as err:
        raise _named(err, folder / name) from None


def _mask_dtype(plan: LabelPlan) -> np.dtype:
    values = [0, plan.num_classes - 1, plan.ignore_index]
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= min(values) and max(values) <= info.max:
            return np.dtype(dtype)
    raise DataError(f"ignore_index {plan.ignore_index} does not fit a 32-bit integer")


def _progress(items, source: Source, what: str):
    return tqdm(items, desc=f"{what} {source.name}", unit="case", leave=False, disable=len(items) < _PROGRESS_MIN_CASES)


def _channel_plan(source: Source, probes: list, notices: list[str]) -> tuple[int, str]:
    channels = sorted({p.channels for p in probes})
    if len(channels) > 1:
        if channels == [1, 3] and not source.volumetric:
            grey = sum(p.channels == 1 for p in probes)
            notices.append(f"{grey} grey image(s) among RGB images: grey values copied to the three channels")
        else:
            raise DataError(f"cases have different channel counts {channels} in {source.root}; every case needs the same")
    dtypes = sorted({p.dtype for p in probes})
    if len(dtypes) > 1:
        notices.append(f"images mix bit depths ({', '.join(dtypes)}); values are used as stored, not rescaled")
    return channels[-1], np.result_type(*dtypes).name


def _build(folder: Path, source: Source, cfg: DataConfig, reader, key: str) -> None:
    summaries: list[MaskSummary] = []
    probes = []
    spacings = []
    for i, case in enumerate(_progress(source.cases, source, "checking masks of")):
        stored, summary = reader.mask(case)
        probes.append(reader.probe(case, stored.shape))
        spacings.append(reader.spacing(case))
        summaries.append(summary)
        _save(folder, f"{i:06d}_raw.npy", stored)
    notices = list(source.notices) + list(dict.fromkeys(reader.notices))
    grey = [not s.colour for s in summaries]
    plan = plan_labels(
        summaries, cfg, num_classes=source.num_classes, class_names=source.class_names, ignore_values=source.ignore_values
    )
    notices += plan.notices
    channels, dtype = _channel_plan(source, probes, notices)
    mask_dtype = _mask_dtype(plan)
    records = []
    for i, case in enumerate(_progress(source.cases, source, "caching")):
        raw = np.load(folder / f"{i:06d}_raw.npy")
        if plan.colour and grey[i]:  # a grey mask among colour masks: grey level v is colour (v, v, v)
            raw = raw.astype(np.int32) * 65793
        labels = plan.apply(raw).astype(mask_dtype)
        image = reader.image(case, channels, dtype)
        spacing = spacings[i]
        if cfg.resize is not None:
            if spacing is not None:
                spacing = resized_spacing(spacing, labels.shape[1:], cfg.resize)
            labels, image = resize_labels(labels, cfg.resize), resize_images(image, cfg.resize)
        _save(folder, f"{i:06d}_mask.npy", labels)
        _save(folder, f"{i:06d}_image.npy", image)
        (folder / f"{i:06d}_raw.npy").unlink()
        valid = labels != plan.ignore_index
        pixels = image.astype(np.float64)
        records.append(
            {
                "case": case.case,
                "split": case.split,
                "images": [str(p) for p in case.images],
                "mask": str(case.mask),
                "slices": int(labels.shape[0]),
                "size": [int(labels.shape[1]), int(labels.shape[2])],
                "spacing": list(spacing) if spacing is not None else None,
                "class_counts": np.bincount(labels[valid].astype(np.int64), minlength=plan.num_classes).tolist(),
                "ignored": int((~valid).sum()),
                "foreground": "".join("1" if f else "0" for f in ((labels > 0) & valid).any(axis=(1, 2))),
                "channel_sum": pixels.sum(axis=(0, 2, 3)).tolist(),
                "channel_sumsq": np.square(pixels).sum(axis=(0, 2, 3)).tolist(),
                "pixels": int(labels.size),
            }
        )
    meta = {
        "version": CACHE_VERSION,
        "key": key,
        "name": source.name,
        "format": source.format,
        "source": source.root,
        "volumetric": source.volumetric,
        "num_classes": plan.num_classes,
        "class_names": plan.class_names,
        "ignore_index": plan.ignore_index,
        "palette": plan.palette,
        "in_channels": channels,
        "image_dtype": dtype if not source.volumetric else "float32",
        "notices": notices,
        "cases": records,
    }
    try:
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    except OSError as err:
        raise _named(err, folder / "meta.json") from None


def _verified(store: CacheStore) -> CacheStore:
    """``store`` once every case's arrays open with the shapes ``meta.json`` records (headers only, memory-mapped):
    a damaged cache is rebuilt, never trusted (``segbench check`` used to pass over emptied slice files)."""
    for i, case in enumerate(store.meta["cases"]):
        expected = (case["slices"], *case["size"])
        image = np.load(store.folder / f"{i:06d}_image.npy", mmap_mode="r")
        mask = np.load(store.folder / f"{i:06d}_mask.npy", mmap_mode="r")
        if mask.shape != expected or image.shape[0] != expected[0] or image.shape[2:] != expected[1:]:
            raise ValueError(f"case {i} of {store.folder} holds shapes {image.shape}, {mask.shape}; expected {expected}")
    return store


def open_or_build(source: Source, cfg: DataConfig, reader, bake_volume_norm: bool, salt: object = None) -> CacheStore:
    """Open the cache for (source, cfg), building it (and running every check) when absent."""
    key = cache_key(source, cfg, bake_volume_norm, salt)
    root = cache_root(cfg)
    safe_name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in source.name) or "data"
    final = root / f"{safe_name}-{key}"
    if (final / "meta.json").is_file():
        try:
            return _verified(CacheStore(final))
        except (OSError, ValueError, EOFError, KeyError, TypeError):  # a damaged file: the folder is ours to rebuild
            shutil.rmtree(final, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".building-{safe_name}-{key}-", dir=root))
    try:
        _build(temporary, source, cfg, reader, key)
        temporary.chmod(0o755)  # mkdtemp makes it private; a cache may be shared via $SEGBENCH_HOME
        try:
            os.rename(temporary, final)
        except OSError:  # another process finished the same key first: use theirs
            if not (final / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return CacheStore(final)
