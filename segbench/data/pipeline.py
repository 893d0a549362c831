"""``load_data``: discover -> check and cache (first time) -> split -> normalise -> datasets + report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segbench.data import BUILTIN_DATASETS, SegmentationData
from segbench.data.brain import BRAIN_CLASS_NAMES, BRAIN_RULE_VERSION, template_files
from segbench.data.cache import CacheStore, open_or_build
from segbench.data.config import DataConfig, DataError
from segbench.data.dataset import IMAGENET_MEAN, IMAGENET_STD, Normalization, SliceDataset, TrainSliceDataset
from segbench.data.layouts import CaseFiles, Source, discover
from segbench.data.readers import BrainReader, ImageReader2D, VolumeReader
from segbench.data.report import DataReport, SplitStats
from segbench.data.splits import SplitPlan, plan_splits

__all__ = ["load", "resolve_source", "check_batchable", "check_batch_fits", "split_record"]


def split_record(data: SegmentationData) -> dict | None:
    """Case ids per split, the classes and the content hash (the cache key: files, sizes, times, options).

    A run records it; ``segbench eval`` compares it with the data as it is now. None for datasets
    that are not segbench's own (they carry no cache)."""
    splits, key = {}, None
    for name, dataset in data.splits.items():
        if not isinstance(dataset, SliceDataset):
            return None
        splits[name] = sorted({dataset.cases[case] for case, _ in getattr(dataset, "full", dataset.items)})
        key = dataset.store.meta.get("key")
    return {"content_hash": key, "num_classes": data.num_classes, "class_names": list(data.class_names), "splits": splits}


def check_batchable(data: SegmentationData, batch_size: int, crop_size: tuple[int, int] | None) -> None:
    """Images of different sizes cannot be stacked into one batch; say so before training, not in collate."""
    (h0, w0), (h1, w1) = data.report.image_sizes
    if batch_size > 1 and crop_size is None and (h0, w0) != (h1, w1):
        raise DataError(
            f"{data.name}: images range from {h0}x{w0} to {h1}x{w1} (HxW) and train.batch_size={batch_size} stacks "
            "several per step; set data.resize=[H,W] or data.augment.crop_size=[H,W], or train.batch_size=1"
        )


def check_batch_fits(data: SegmentationData, batch_size: int) -> None:
    """A training split smaller than one batch gives no step (the incomplete last batch is dropped): say so
    before training, and once before a sweep, rather than in every run's loop."""
    count = len(data.splits["train"])
    if count < batch_size:
        raise DataError(
            f"{data.name}: the train split serves {count} image(s) per epoch, fewer than train.batch_size={batch_size}, "
            f"and an incomplete batch is dropped, so no training step could be taken; set train.batch_size={count} or "
            f"lower (--set train.batch_size={count}), or give it more training cases"
        )


def _is_builtin(cfg: DataConfig) -> bool:
    return cfg.source in BUILTIN_DATASETS and not Path(cfg.source).is_dir()


def resolve_source(cfg: DataConfig) -> tuple[Source, object, object]:
    """(source, reader, cache-key salt) for ``cfg.source``."""
    bake = cfg.normalize in ("auto", "volume")
    if _is_builtin(cfg):
        if cfg.format != "auto":
            raise ValueError(f"format={cfg.format!r} does not apply to the built-in dataset {cfg.source!r}")
        files = template_files()
        source = Source(
            name=cfg.source,
            format="builtin",
            root="MNI152 2009a template shipped with nilearn",
            volumetric=True,
            cases=[CaseFiles("mni152", (files["t1"],), files["gm"])],
            num_classes=len(BRAIN_CLASS_NAMES),
            class_names=list(BRAIN_CLASS_NAMES),
            extra_files=(files["wm"],),
        )
        return source, BrainReader(cfg, bake), ("brain-mri", BRAIN_RULE_VERSION)
    source = discover(cfg)
    if not source.volumetric:
        if cfg.normalize == "volume":
            raise ValueError("normalize='volume' applies to NIfTI volumes; for 2D images use auto, dataset, imagenet or none")
        return source, ImageReader2D(cfg), None
    return source, VolumeReader(cfg, bake), None


def _channel_stats(store: CacheStore, ranges: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over the given slices (exact; from cached sums for whole cases)."""
    channels = store.meta["in_channels"]
    total, total_sq, count = np.zeros(channels), np.zeros(channels), 0
    for case, first, stop in ranges:
        record = store.meta["cases"][case]
        if (first, stop) == (0, record["slices"]):
            total += record["channel_sum"]
            total_sq += record["channel_sumsq"]
            count += record["pixels"]
        else:
            for index in range(first, stop):
                pixels = store.image(case, index).astype(np.float64)
                total += pixels.sum(axis=(1, 2))
                total_sq += np.square(pixels).sum(axis=(1, 2))
                count += pixels[0].size
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 0.0))
    return mean, np.where(std > 1e-6, std, 1.0)  # a constant channel is only centred


def _normalization(cfg: DataConfig, store: CacheStore, splits: SplitPlan, baked: bool) -> Normalization:
    meta = store.meta
    channels, dtype = meta["in_channels"], meta["image_dtype"]
    identity = (0.0,) * channels, (1.0,) * channels
    if meta["volumetric"] and baked:
        return Normalization("volume", *identity, dtype)
    if cfg.normalize == "none":
        return Normalization("none", *identity, dtype)
    eight_bit_rgb = channels == 3 and dtype == "uint8"
    if cfg.normalize == "imagenet" or (cfg.normalize == "auto" and eight_bit_rgb):
        if not eight_bit_rgb:
            raise DataError(f"normalize='imagenet' needs 8-bit RGB images; these have {channels} channel(s) of {dtype}")
        return Normalization("imagenet", tuple(255 * m for m in IMAGENET_MEAN), tuple(255 * s for s in IMAGENET_STD), dtype)
    mean, std = _channel_stats(store, splits.ranges["train"])
    return Normalization("dataset", tuple(mean.tolist()), tuple(std.tolist()), dtype)


def _split_stats(store: CacheStore, ranges: list[tuple[int, int, int]], num_classes: int) -> SplitStats:
    counts = np.zeros(num_classes, dtype=np.int64)
    ignored = slices = 0
    for case, first, stop in ranges:
        record = store.meta["cases"][case]
        if (first, stop) == (0, record["slices"]):
            counts += np.asarray(record["class_counts"], dtype=np.int64)
            ignored += record["ignored"]
        else:
            for index in range(first, stop):
                mask = store.mask(case, index).astype(np.int64)
                valid = mask != store.meta["ignore_index"]
                counts += np.bincount(mask[valid], minlength=num_classes)
                ignored += int((~valid).sum())
        slices += stop - first
    return SplitStats(len({case for case, _, _ in ranges}), slices, counts.tolist(), ignored)


def _check_foreground(stats: dict[str, SplitStats], splits: SplitPlan, meta: dict) -> list[str]:
    """Data that cannot train is an error here, not at the first validation.

    Class 0 is background. A train split without any foreground pixel teaches nothing (and used to
    fail at the first validation with a reshape error); a val split without one makes every
    foreground metric undefined, so no checkpoint could ever be the best one."""
    if meta["num_classes"] < 2:  # every mask background: nothing to tell apart (train and run used to fail later)
        masks = [case["mask"] for case in meta["cases"]]
        raise DataError(f"every mask ({', '.join(masks[:3])}{' and more' if len(masks) > 3 else ''}) holds one value, "
                        "class 0 (background): there is no foreground to learn. Check that the masks hold the labels, "
                        "or give data.num_classes if a class is absent on purpose")
    warnings = []
    for name in ("train", "val"):
        if name not in stats or sum(stats[name].class_pixels[1:]) > 0:
            continue
        masks = [meta["cases"][case]["mask"] for case, _, _ in splits.ranges[name]]
        shown = ", ".join(dict.fromkeys(masks[:3])) + (f" and {len(set(masks)) - 3} more" if len(set(masks)) > 3 else "")
        if name == "train":
            raise DataError(f"the train split holds no foreground pixel: every mask ({shown}) is all background "
                            "(class 0); nothing can be learned. Check that the masks hold the labels")
        warnings.append(f"warning: the val split holds no foreground pixel ({stats[name].cases} case(s): {shown}): "
                        "foreground metrics are undefined, so no checkpoint is ever the best and no best.pt is written "
                        "(eval/predict then need --which last). Put cases with foreground in val (data.split_file, "
                        "data.seed or data.val_fraction)")
    return warnings


def _classes_only_held_out(stats: dict[str, SplitStats], class_names: list[str]) -> list[str]:
    """A class that val or test hold but train never shows cannot be learned: its scores there will be 0,
    whatever the architecture. Said by check, train and before a sweep, not only in check's histogram."""
    if "train" not in stats:
        return []
    warnings = []
    for k, name in enumerate(class_names):
        held_out = {split: s.class_pixels[k] for split, s in stats.items() if split != "train" and s.class_pixels[k]}
        if stats["train"].class_pixels[k] == 0 and held_out:
            where = ", ".join(f"{split} ({pixels} px)" for split, pixels in held_out.items())
            warnings.append(f"warning: class {name!r} is in {where} but never in train: no model can learn it, so its "
                            "scores there will be 0. Put cases that hold it in train (data.split_file, data.seed or "
                            "data.val_fraction)")
    return warnings


def load(cfg: DataConfig) -> SegmentationData:
    """Implementation of ``segbench.data.load_data``."""
    source, reader, salt = resolve_source(cfg)
    baked = source.volumetric and cfg.normalize in ("auto", "volume")
    store = open_or_build(source, cfg, reader, baked, salt)
    meta = store.meta
    cases = meta["cases"]
    splits = plan_splits(
        [c["case"] for c in cases], [c["split"] for c in cases], [c["slices"] for c in cases], cfg, volumetric=meta["volumetric"]
    )
    normalization = _normalization(cfg, store, splits, baked)
    datasets = {}
    for name, ranges in splits.ranges.items():
        items = [(case, index) for case, first, stop in ranges for index in range(first, stop)]
        if not items:
            raise DataError(f"the {name} split is empty")
        if name == "train":
            empty = {item for item in items if meta["volumetric"] and cases[item[0]]["foreground"][item[1]] == "0"}
            keep = cfg.keep_empty_slices if meta["volumetric"] else 1.0
            datasets[name] = TrainSliceDataset(store, items, normalization, cfg.augment, meta["ignore_index"], cfg.seed, empty, keep)
        else:
            datasets[name] = SliceDataset(store, items, normalization)
    split_stats = {name: _split_stats(store, ranges, meta["num_classes"]) for name, ranges in splits.ranges.items()}
    notices = (list(meta["notices"]) + splits.notices + _check_foreground(split_stats, splits, meta)
               + _classes_only_held_out(split_stats, meta["class_names"]))
    sizes = [tuple(c["size"]) for c in cases]
    report = DataReport(
        name=meta["name"],
        format=meta["format"],
        source=meta["source"],
        num_classes=meta["num_classes"],
        class_names=list(meta["class_names"]),
        in_channels=meta["in_channels"],
        ignore_index=meta["ignore_index"],
        image_sizes=(min(sizes), max(sizes)),
        normalization=normalization.describe(),
        splits=split_stats,
        notices=notices,
        train_slices_per_epoch=len(datasets["train"]),
    )
    return SegmentationData(
        name=meta["name"],
        num_classes=meta["num_classes"],
        in_channels=meta["in_channels"],
        class_names=list(meta["class_names"]),
        ignore_index=meta["ignore_index"],
        splits=datasets,
        notices=notices,
        report=report,
        format=meta["format"],
        volumetric=meta["volumetric"],
        normalization=normalization,
        config=cfg,
        palette=[tuple(c) for c in meta["palette"]] if meta["palette"] else None,
    )
