"""Train/val/test assignment: by case (image or volume), never by slice of a shared volume.

Order of authority: ``split_file``, then the folder layout (``train/ val/ test/`` folders), then a
split seeded by ``cfg.seed``. A split the layout lacks (e.g. val when only ``imagesTr/`` exists) is
carved from train by ``val_fraction`` / ``test_fraction``. A lone volume is cut into slabs along the
slice axis: ``SLABS`` equal slabs, val/test slabs drawn (seeded) from the inner ones (the outermost
slabs hold atypical anatomy), and ``slab_gap`` slices dropped at every boundary between slabs of
different splits, so no two neighbouring slices end up on both sides.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from segbench.data.config import DataConfig, DataError

__all__ = ["SplitPlan", "plan_splits", "read_split_file", "SLABS"]

SLABS = 10
_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass
class SplitPlan:
    ranges: dict[str, list[tuple[int, int, int]]]  # split -> (case index, first slice, stop slice)
    by_slab: bool = False
    notices: list[str] = field(default_factory=list)


def read_split_file(path: str | Path, fold: int | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """{"train": [ids], "val": [ids], "test": [ids]} (JSON or YAML), or nnU-Net's splits_final.json
    (a list of folds: ``fold``, default 0)."""
    path = Path(path).expanduser()
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read split file {path}: {exc}") from None
    notices = []
    if isinstance(content, list) and content and isinstance(content[0], dict):
        if not 0 <= (fold or 0) < len(content):
            raise DataError(f"split file {path} lists {len(content)} folds; fold {fold} is not one of them")
        content = content[fold or 0]
        notices.append(f"{path} lists folds (nnU-Net splits_final.json); using fold {fold or 0}")
    elif fold is not None:
        raise DataError(f"split file {path} names one split, not folds: remove folds, or give nnU-Net's "
                        "splits_final.json (a list of folds)")
    if not isinstance(content, dict) or not content:
        raise DataError(f"split file {path} must map train/val/test to lists of case ids")
    splits: dict[str, list[str]] = {}
    for key, ids in content.items():
        if str(key).lower() not in _ALIASES or not isinstance(ids, list):
            raise DataError(f"split file {path}: entry {key!r} must be one of train/val/test with a list of case ids")
        splits[_ALIASES[str(key).lower()]] = [str(i) for i in ids]
    return splits, notices


def _held_out_counts(n: int, cfg: DataConfig, wanted: tuple[str, ...]) -> dict[str, int]:
    fractions = {"val": cfg.val_fraction, "test": cfg.test_fraction}
    return {s: max(1, round(fractions[s] * n)) for s in wanted if fractions[s] > 0}


def _case_position(case: str, seed: int) -> float:
    """Where a case falls in [0, 1): a hash of (seed, case id), the same whatever else is in the data."""
    return int(hashlib.sha256(f"{seed}:{case}".encode()).hexdigest()[:15], 16) / 16**15


def _carve(indices: list[int], cases: list[str], cfg: DataConfig, wanted: tuple[str, ...]) -> dict[str, list[int]]:
    """Seeded split of ``indices`` into train plus the ``wanted`` held-out splits.

    Each case's side follows from its own position, a hash of (seed, case id) in [0, 1): val below
    ``val_fraction``, test in the next ``test_fraction``, train above. Adding or removing cases never
    moves another case to the other side (a shuffle, or cutting a sorted order at a count, does), so a
    training image never turns up in a later run's validation set; split sizes follow the fractions on
    average rather than exactly. With few cases, a held-out split that would be empty takes the training
    case nearest its band, and an empty train split the highest-placed held-out case; more data may undo
    those two exceptions. ``segbench eval`` compares the split a run recorded."""
    bands, start = {}, 0.0
    for split in ("val", "test"):
        fraction = {"val": cfg.val_fraction, "test": cfg.test_fraction}[split]
        if split in wanted and fraction > 0:
            bands[split] = (start, start + fraction)
            start += fraction
    position = {i: _case_position(cases[i], cfg.seed) for i in indices}
    out: dict[str, list[int]] = {split: [] for split in bands}
    out["train"] = []
    for i in indices:
        side = next((split for split, (low, high) in bands.items() if low <= position[i] < high), "train")
        out[side].append(i)
    if not out["train"]:  # every case fell into a held-out band: the highest-placed one trains
        donor = max((split for split in bands if len(out[split]) > 1), key=lambda s: len(out[s]), default=None)
        if donor is not None:
            highest = max(out[donor], key=lambda i: position[i])
            out[donor].remove(highest)
            out["train"].append(highest)
    for split, (low, high) in bands.items():
        if not out[split] and len(out["train"]) > 1:
            nearest = min(out["train"], key=lambda i: position[i] - high if position[i] >= high else 2 + low - position[i])
            out["train"].remove(nearest)
            out[split].append(nearest)
    if not out["train"] or any(not out[split] for split in bands):
        raise DataError(
            f"{len(indices)} case(s) are too few to hold out {' and '.join(bands)} and keep one for training; "
            "add data, lower val_fraction/test_fraction or give a split_file"
        )
    return {split: sorted(members) for split, members in out.items()}


def _group(case: str, cfg: DataConfig) -> str:
    """The case's group (patient) by ``group_pattern``; a case with no match is its own group."""
    match = re.search(cfg.group_pattern, case) if cfg.group_pattern else None
    return match.group(1) if match else case


def _folds(indices: list[int], cases: list[str], cfg: DataConfig, wanted: tuple[str, ...]) -> dict[str, list[int]]:
    """K-fold cross-validation over groups (cases without ``group_pattern``): groups ordered by their hash
    position (``_case_position`` of the group id), fold k validates the groups at ranks r with
    r * K // n == k, so the folds partition the groups and differ in size by at most one. A test split
    (``test_fraction``) is carved first by the usual bands and is the same in every fold."""
    out: dict[str, list[int]] = {"train": [], "val": []}
    pool = indices
    if "test" in wanted:
        held = _carve(indices, cases, replace(cfg, val_fraction=0.0), ("test",))
        out["test"], pool = held["test"], held["train"]
    groups = sorted({_group(cases[i], cfg) for i in pool}, key=lambda g: _case_position(g, cfg.seed))
    if len(groups) < cfg.folds:
        raise DataError(f"{len(groups)} group(s) of cases are too few for {cfg.folds} folds; lower --folds or add data")
    fold_of = {g: rank * cfg.folds // len(groups) for rank, g in enumerate(groups)}
    for i in pool:
        out["val" if fold_of[_group(cases[i], cfg)] == cfg.fold else "train"].append(i)
    return {split: sorted(members) for split, members in out.items()}


def _slabs(slices: int, cfg: DataConfig, wanted: tuple[str, ...]) -> dict[str, list[tuple[int, int]]]:
    gap = cfg.slab_gap
    count = min(SLABS, slices // (gap + 1))
    if cfg.folds:  # cross-validation of a lone volume: fold k validates the slabs k*count//K ... (k+1)*count//K - 1
        if "test" in wanted:
            raise DataError("a lone volume cannot hold a test split and cross-validation folds at once; "
                            "set test_fraction=0 or give more volumes")
        if count < cfg.folds:
            raise DataError(f"one volume of {slices} slices holds {count} slabs, too few for {cfg.folds} folds")
        owner = ["val" if k * cfg.folds // count == cfg.fold else "train" for k in range(count)]
        return _slab_ranges(slices, count, owner, gap)
    held = _held_out_counts(count, cfg, wanted) if count else {}
    if count < sum(held.values()) + 1 or not held:
        raise DataError(
            f"one volume of {slices} slices cannot be split by slab into train and {', '.join(wanted)} with "
            f"slab_gap={gap}; add volumes or lower slab_gap"
        )
    candidates = list(range(1, count - 1)) if count - 2 >= sum(held.values()) else list(range(count))
    order = [candidates[i] for i in np.random.default_rng(cfg.seed).permutation(len(candidates))]
    owner = ["train"] * count
    start = 0
    for split, n in held.items():
        for slab in order[start : start + n]:
            owner[slab] = split
        start += n
    return _slab_ranges(slices, count, owner, gap)


def _slab_ranges(slices: int, count: int, owner: list[str], gap: int) -> dict[str, list[tuple[int, int]]]:
    """Slice ranges per split for ``count`` equal slabs owned as ``owner`` says, with ``gap`` slices dropped
    at every boundary between slabs of different splits (from the held-out side's neighbour in train)."""
    bounds = np.linspace(0, slices, count + 1).round().astype(int)
    first, stop = list(bounds[:-1]), list(bounds[1:])
    for k in range(count - 1):  # drop `gap` slices at each boundary between different splits
        if owner[k] != owner[k + 1]:
            if owner[k] == "train":
                stop[k] -= gap
            else:
                first[k + 1] += gap
    ranges: dict[str, list[tuple[int, int]]] = {}
    for k in range(count):
        if first[k] >= stop[k]:
            continue
        spans = ranges.setdefault(owner[k], [])
        if spans and spans[-1][1] == first[k]:
            spans[-1] = (spans[-1][0], stop[k])
        else:
            spans.append((first[k], stop[k]))
    return ranges


def plan_splits(
    cases: list[str], layout: list[str | None], slices: list[int], cfg: DataConfig, *, volumetric: bool
) -> SplitPlan:
    """Assign every case (or, for a lone volume, every slab) to train / val / test."""
    notices: list[str] = []
    assigned: dict[str, list[int]] = {}
    if cfg.split_file:
        listed, notices = read_split_file(cfg.split_file, cfg.fold if cfg.folds else None)
        index = {case: i for i, case in enumerate(cases)}
        unknown = sorted({c for ids in listed.values() for c in ids if c not in index})
        if unknown:
            raise DataError(f"split file {cfg.split_file} names unknown case(s): {', '.join(unknown[:10])}")
        seen: dict[str, str] = {}
        for split, ids in listed.items():
            for case in ids:
                if case in seen and seen[case] != split:
                    raise DataError(f"split file {cfg.split_file} puts {case!r} in both {seen[case]} and {split}")
                seen[case] = split
            assigned[split] = sorted({index[c] for c in ids})
        left_out = [c for c in cases if c not in seen]
        if left_out:
            message = f"{len(left_out)} case(s) are in no split of {cfg.split_file}, e.g. {left_out[0]}"
            if cfg.strict:
                raise DataError(message)
            notices.append(message + "; they are not used")
        if any(layout):
            notices.append(f"split_file {cfg.split_file} overrides the train/val/test folders")
    elif any(layout):
        for i, split in enumerate(layout):
            assigned.setdefault(split or "train", []).append(i)
    else:
        assigned["train"] = list(range(len(cases)))

    empty = [split for split, members in assigned.items() if not members]
    if empty:
        raise DataError(f"split(s) {', '.join(empty)} hold no cases")
    wanted = tuple(s for s in ("val", "test") if s not in assigned and (s == "val" or cfg.test_fraction > 0))
    if cfg.folds and "val" not in wanted and not cfg.split_file:
        raise DataError(f"folds={cfg.folds}: the data already names its validation cases (val/ folders or a split "
                        "file); cross-validation needs them pooled: remove those, or folds")
    if "val" in wanted and cfg.val_fraction <= 0 and not cfg.folds:
        raise DataError("no validation split: give val/ folders or a split_file, or set val_fraction > 0")
    ranges: dict[str, list[tuple[int, int, int]]] = {}
    by_slab = False
    if wanted:
        train = assigned.pop("train", [])
        if not train:
            raise DataError("no training cases to hold val/test out of")
        if len(train) == 1 and volumetric:
            by_slab = True
            for split, spans in _slabs(slices[train[0]], cfg, wanted).items():
                ranges[split] = [(train[0], a, b) for a, b in spans]
            notices.append(f"one training volume: split by slab along the slice axis with {cfg.slab_gap} slice(s) dropped between splits")
        elif cfg.folds:
            assigned.update(_folds(train, cases, cfg, wanted))
            notices.append(f"cross-validation: fold {cfg.fold} of {cfg.folds} is the validation split")
        else:
            assigned.update(_carve(train, cases, cfg, wanted))
    for split, members in assigned.items():
        ranges[split] = [(i, 0, slices[i]) for i in members]
    order = [s for s in ("train", "val", "test") if s in ranges]
    return SplitPlan({s: ranges[s] for s in order}, by_slab, notices)
