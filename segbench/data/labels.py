"""From stored mask values to class ids: one dataset-wide decision, then one lookup per mask.

The decision needs every mask's set of values first (a single 0/255 mask is not evidence of a binary
dataset, the union over all masks is), so the cache builder collects ``MaskSummary``s in a first pass
and asks ``plan_labels`` for a ``LabelPlan``. Rules, in order:

1. Colour masks (RGB whose channels differ): colours -> class ids through ``cfg.palette`` (class k has
   colour k), else through a palette inferred from at most ``MAX_INFERRED_COLOURS`` colours sorted by
   (r, g, b) so black is class 0 (a notice; DataError with ``strict``). Other colours -> DataError.
   P-mode PNGs are not colour masks: their pixel values already are class ids (Pascal VOC style).
2. Grey masks whose values over the whole dataset are exactly {0, 255} (or {0, 65535}) are binary:
   255 -> 1 with a notice (DataError with ``strict``), unless num_classes > 2 is given.
3. Values named "ignore" by nnU-Net's dataset.json -> ``ignore_index``.
4. ``reduce_zero_label`` (MMSegmentation): 0 -> ignore, k -> k - 1, ``ignore_index`` stays.
5. num_classes = cfg / dataset.json / palette, else largest id + 1. Any id outside
   [0, num_classes) that is not ``ignore_index`` -> DataError naming the files and values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segbench.data.config import DataConfig, DataError

__all__ = ["MaskSummary", "LabelPlan", "plan_labels", "pack_colours", "unpack_colour", "MAX_INFERRED_COLOURS"]

MAX_INFERRED_COLOURS = 32
_BINARY_HIGH = (255, 65535)


def pack_colours(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) int32 code r * 65536 + g * 256 + b."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def unpack_colour(code: int) -> tuple[int, int, int]:
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


@dataclass
class MaskSummary:
    mask: Path  # the file, for error messages
    values: np.ndarray  # unique stored values (packed colours when ``colour``)
    counts: np.ndarray | None = None  # pixels per value, for error messages
    colour: bool = False
    palette: list[tuple[int, int, int]] | None = None  # of a P-mode PNG


@dataclass
class LabelPlan:
    keys: np.ndarray  # sorted stored values (colour codes for colour masks)
    values: np.ndarray  # class id or ignore_index for each key
    num_classes: int
    class_names: list[str]
    ignore_index: int
    colour: bool = False
    palette: list[tuple[int, int, int]] | None = None  # drawing colours, one per class, when known
    notices: list[str] = field(default_factory=list)

    def apply(self, stored: np.ndarray) -> np.ndarray:
        """Stored values (all seen by the plan) -> class ids, as int64."""
        index = np.searchsorted(self.keys, stored)
        return self.values[np.clip(index, 0, len(self.keys) - 1)]


def _files_with(summaries: list[MaskSummary], bad: set[int], describe) -> str:
    hits = [(s.mask, sorted(set(s.values.tolist()) & bad)) for s in summaries]
    hits = [(path, values) for path, values in hits if values]
    shown = "; ".join(f"{path}: {', '.join(describe(v) for v in values[:8])}" for path, values in hits[:5])
    more = f" (and {len(hits) - 5} more files)" if len(hits) > 5 else ""
    return shown + more


def _value_counts(summaries: list[MaskSummary], values: list[int]) -> str:
    """"128: 8 px in 1 file (masks/a.png)" per value: which files a stray value comes from, and how much."""
    parts = []
    for value in values[:6]:
        pixels, files = 0, []
        for s in summaries:
            hit = np.nonzero(s.values == value)[0]
            if hit.size:
                pixels += int(s.counts[hit[0]]) if s.counts is not None else 0
                files.append(s.mask)
        shown = ", ".join(str(f) for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        parts.append(f"{value}: {pixels} px in {len(files)} file(s) ({shown})")
    return "; ".join(parts) + (f"; and {len(values) - 6} more values" if len(values) > 6 else "")


def _check_consistent_ids(summaries: list[MaskSummary], union: np.ndarray, classes: list[int], ignore: int) -> None:
    """Refuse grey masks whose values fit no reading: not ids 0..K-1 (a few gaps allowed), not binary 0/255.

    0/255 masks with a few stray pixels of 128 used to become 129 classes with 255 ignored: the
    foreground vanished silently. Fewer than half of the inferred ids occurring is such a case."""
    count = max(classes) + 1
    if count <= 2 or 2 * len(classes) >= count:
        return
    stored = [int(v) for v in union]
    high = next((h for h in _BINARY_HIGH if {0, h} <= set(stored)), None)
    if high is not None:
        offending = [v for v in stored if v not in (0, high)]
        reading = f"they look binary (0/{high}) but other values occur"
    else:
        offending = [v for v in stored if v not in (0, ignore)]
        reading = f"they would be {count} class ids of which only {len(classes)} occur"
    raise DataError(
        f"mask values {', '.join(map(str, stored[:10]))}{' ...' if len(stored) > 10 else ''} fit no consistent reading "
        f"(class ids 0..K-1, binary 0/255, or a palette): {reading}: {_value_counts(summaries, offending)}. "
        "Fix those masks, or give data.num_classes (and data.ignore_index) if the values are meant"
    )


def _colour_mapping(summaries, cfg: DataConfig, union: np.ndarray, notices: list[str]) -> tuple[dict, list]:
    describe = lambda code: str(unpack_colour(code))  # noqa: E731
    if cfg.palette is not None:
        palette = list(cfg.palette)
        known = {int(pack_colours(np.array(c))): k for k, c in enumerate(palette)}
        unknown = set(union.tolist()) - set(known)
        if unknown:
            raise DataError(
                f"mask colours not in the palette ({len(palette)} colours): " + _files_with(summaries, unknown, describe)
            )
        return known, palette
    if cfg.strict:
        raise DataError(f"masks are RGB colour images (e.g. {summaries[0].mask}); give palette=[[r, g, b], ...] (strict mode infers none)")
    if len(union) > MAX_INFERRED_COLOURS:
        raise DataError(
            f"RGB masks hold {len(union)} distinct colours (e.g. {summaries[0].mask}), too many to infer a palette "
            f"(at most {MAX_INFERRED_COLOURS}; anti-aliased edges or JPEG artefacts?). Give palette=[[r, g, b], ...] "
            "or store class ids in a grey/P-mode PNG"
        )
    palette = [unpack_colour(int(code)) for code in union]  # union is sorted: black first
    notices.append(
        f"masks are RGB with {len(palette)} colours; inferred palette (sorted by colour): "
        + ", ".join(f"{c} -> {k}" for k, c in enumerate(palette))
        + ". Pass palette= to fix the order"
    )
    return {int(code): k for k, code in enumerate(union)}, palette


def plan_labels(
    summaries: list[MaskSummary],
    cfg: DataConfig,
    *,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    ignore_values: tuple[int, ...] = (),
) -> LabelPlan:
    """Decide the stored-value -> class-id mapping for the whole dataset (rules in the module docstring)."""
    notices: list[str] = []
    ignore = cfg.ignore_index
    num_classes = cfg.num_classes or num_classes
    colour = any(s.colour for s in summaries)
    if colour:  # grey masks in a colour dataset are grey colours
        for s in summaries:
            if not s.colour:
                if s.values.size and s.values.max() > 255:
                    raise DataError(f"{s.mask} is a 16-bit grey mask among RGB colour masks; use one kind of mask")
                s.values, s.colour = s.values.astype(np.int32) * 65793, True
    union = np.unique(np.concatenate([s.values for s in summaries]).astype(np.int64))
    palette = next((s.palette for s in summaries if s.palette), None)
    binary = False
    if colour:
        mapping, palette = _colour_mapping(summaries, cfg, union, notices)
        num_classes = num_classes or len(palette)
    else:
        mapping = {int(v): int(v) for v in union}
        high = [h for h in _BINARY_HIGH if set(mapping) == {0, h}]
        if high and num_classes in (None, 2):
            if cfg.strict:
                raise DataError(
                    f"masks hold only the values 0 and {high[0]} (e.g. {summaries[0].mask}); strict mode wants class ids 0/1"
                )
            mapping, binary = {0: 0, high[0]: 1}, True
            notices.append(f"masks use 0/{high[0]}: mapped to 0/1 (background/foreground)")
    for raw in ignore_values:
        if raw in mapping:
            mapping[raw] = ignore
    if cfg.reduce_zero_label:
        mapping = {raw: ignore if v in (0, ignore) else v - 1 for raw, v in mapping.items()}
    classes = sorted({v for v in mapping.values() if v != ignore})
    if not classes:
        raise DataError(f"no mask holds a class label: every value is ignore_index {ignore} ({len(summaries)} masks)")
    inferred = num_classes is None
    if inferred and not colour and not binary:
        _check_consistent_ids(summaries, union, classes, ignore)
    num_classes = num_classes if num_classes is not None else max(classes) + 1
    bad_raw = {raw for raw, v in mapping.items() if v != ignore and not 0 <= v < num_classes}
    if bad_raw:
        describe = (lambda c: str(unpack_colour(c))) if colour else str
        raise DataError(
            f"label values outside 0..{num_classes - 1} (num_classes={num_classes}) and not ignore_index {ignore}: "
            + _files_with(summaries, bad_raw, describe)
        )
    unused = sorted(set(range(num_classes)) - set(classes))
    if unused and inferred and not colour:
        notices.append(
            f"class ids {', '.join(map(str, unused[:10]))}{' ...' if len(unused) > 10 else ''} never occur in any mask "
            f"(num_classes inferred as {num_classes} from the largest id); if masks encode classes as grey levels, map them to 0..K-1"
        )
    names = list(cfg.class_names or class_names or [])
    if not names:
        names = ["background", "foreground"] if binary else ["background"] + [f"class_{k}" for k in range(1, num_classes)]
    if len(names) != num_classes:
        raise DataError(f"{len(names)} class names given for {num_classes} classes: {names}")
    keys = np.array(sorted(mapping), dtype=np.int64)
    values = np.array([mapping[int(k)] for k in keys], dtype=np.int64)
    palette = list(palette[:num_classes]) if palette else None
    return LabelPlan(keys, values, num_classes, names, ignore, colour, palette, notices)
