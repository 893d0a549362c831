"""Segmentation metrics, in the two conventions the field uses.

**Dataset-level (MMSegmentation's ``IoUMetric``)**: one confusion matrix is accumulated over every
labelled pixel of the split (pixels whose label is ``ignore_index`` are skipped), then per class

- IoU = TP / (TP + FP + FN),  Dice = 2 TP / (2 TP + FP + FN),
- Acc = recall = TP / (TP + FN),  precision = TP / (TP + FP),  Fscore = 2 P R / (P + R) (beta = 1),
- aAcc = sum TP / number of labelled pixels.

A ratio whose denominator is zero is NaN: a class absent from both prediction and ground truth has
NaN IoU and Dice; a class absent from the ground truth has NaN Acc/recall; a class never predicted
has NaN precision. Means (``mIoU``, ``mDice``, ...) skip NaN entries (``nanmean``), exactly as
MMSegmentation does; the ``*_fg`` variants also leave out the background class.

**Per case (the medical convention; Metrics Reloaded, Maier-Hein et al. 2024)**: the slices of one
case (items sharing ``case``) are stacked in ``index`` order into a volume (slices, H, W) and compared
in 3D; a 2D image is its own case. Pixels whose label is ``ignore_index`` count for neither side. For
every foreground class of every case:

- Dice = 2 |P and R| / (|P| + |R|) and IoU = |P and R| / |P or R| of prediction P and reference R;
- HD95 (MedPy's pooled 95th-percentile surface distance) and NSD (normalised surface distance,
  surface Dice, at tolerance tau; Nikolov et al. 2021), defined in ``segbench.engine.surface``.

Distances are in mm when the case has a voxel spacing (NIfTI volumes: the header's voxel size,
ordered as the case's (slices, H, W) array; ``segbench.data.volumes.slice_spacing``) and in pixels
otherwise (2D images); ``compute()`` says which in ``distance_unit``, and tau is in the same unit.

Empty structures (after ignored pixels are removed), per case and class:

- absent from both reference and prediction: Dice, IoU, NSD and HD95 are NaN, so the pair counts in
  no mean (nothing to find, nothing found). Reported as both empty (``ref_empty`` and ``pred_empty``
  in the per-case rows) and counted in ``hd95_undefined``. (MONAI's ``ignore_empty`` skips every
  case with an empty reference, even one where the prediction invents a structure; here that is 0.)
- absent from exactly one (a missed or an invented structure): Dice 0, IoU 0, NSD 0, and HD95 the
  worst case, the diagonal of the case's array extent sqrt(sum_i (shape_i * spacing_i)^2) in the same
  unit (counted in ``hd95_worst_case``). Such a pair is never dropped: a model that misses a structure
  must score worse than one that finds it roughly.

Figures: per class the mean over cases (NaN skipped), then the mean over foreground classes.
``per_case_rows()`` gives every (case, class) pair, ``write_per_case_csv`` writes them.
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from segbench.engine.surface import hd95, nsd, surface_scores
from segbench.metric_defs import METRICS, lower_is_better
from segbench.run_files import writable

__all__ = [
    "SCALAR_METRICS",
    "SURFACE_METRICS",
    "PER_CASE_COLUMNS",
    "PER_SLICE_COLUMNS",
    "confusion_matrix",
    "scores_from_confusion",
    "dice_per_class",
    "hd95",
    "nsd",
    "CaseScores",
    "SegmentationMetrics",
    "write_per_case_csv",
    "is_better",
    "lower_is_better",
]

# The single-number figures of ``SegmentationMetrics.compute`` (candidates for ``train.best_metric``); their
# labels, units and directions are in ``segbench.metric_defs``, the one vocabulary.
SCALAR_METRICS = tuple(key for key, m in METRICS.items() if m.selectable)
# Surface-distance figures: computed only with ``compute_hd95`` (``eval.hd95``).
SURFACE_METRICS = ("hd95_fg", "nsd_fg")
# The columns of ``per_case_rows`` and of the CSV ``write_per_case_csv`` writes (distances in
# ``compute()["distance_unit"]``).
PER_CASE_COLUMNS = ("case", "class", "dice", "iou", "nsd", "hd95", "ref_empty", "pred_empty")
# The columns of ``per_slice_rows``: each slice of a volume scored as a 2D image.
PER_SLICE_COLUMNS = ("case", "slice", "class", "dice", "ref_empty")


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255) -> Tensor:
    """Confusion matrix (rows: ground truth, columns: prediction) over pixels whose label is valid."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    valid = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        valid &= target != ignore_index
    codes = target[valid] * num_classes + pred[valid]
    return torch.bincount(codes, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1e-300), np.nan)


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or np.all(np.isnan(values)):
        return float("nan")
    return float(np.nanmean(values))


def scores_from_confusion(cm: Tensor | np.ndarray) -> dict[str, np.ndarray | float]:
    """Per-class arrays (IoU, Dice, Acc, Precision, Recall, Fscore) and aAcc from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    area_label, area_pred = cm.sum(1), cm.sum(0)
    precision, recall = _ratio(tp, area_pred), _ratio(tp, area_label)
    return {
        "aAcc": float(tp.sum() / cm.sum()) if cm.sum() > 0 else float("nan"),
        "IoU": _ratio(tp, area_label + area_pred - tp),
        "Dice": _ratio(2 * tp, area_label + area_pred),
        "Acc": recall,
        "Precision": precision,
        "Recall": recall,
        "Fscore": _ratio(2 * precision * recall, precision + recall),
    }


def _overlap(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    # (Dice, IoU) of two binary masks; NaN when both are empty.
    both, pred_size, target_size = int((pred & target).sum()), int(pred.sum()), int(target.sum())
    if pred_size + target_size == 0:
        return float("nan"), float("nan")
    return 2.0 * both / (pred_size + target_size), both / (pred_size + target_size - both)


def dice_per_class(pred: np.ndarray, target: np.ndarray, classes: list[int]) -> list[float]:
    """Dice of each class in one case (any dimensionality); NaN where the class is absent from both."""
    return [_overlap(pred == c, target == c)[0] for c in classes]


@dataclass
class CaseScores:
    """One case's scores, one entry per foreground class (NaN: undefined, see the module docstring)."""

    case: str
    spacing: tuple[float, ...] | None  # voxel size per axis of the scored array; None: pixels
    dice: list[float]
    iou: list[float]
    ref_empty: list[bool]
    pred_empty: list[bool]
    nsd: list[float] | None = None  # None: surface distances not computed
    hd95: list[float] | None = None
    # A volume's slices, each scored alone (index, Dice per foreground class, whether the reference is empty
    # there per class): the review's units when a split holds a single volume. Empty for a 2D image.
    slices: list[tuple[int, list[float], list[bool]]] = field(default_factory=list)


def _case_spacing(spacing: tuple[float, ...] | None, ndim: int, case: str) -> tuple[float, ...] | None:
    # Item spacing is (slice, row, column); a one-slice case is scored as its 2D slice.
    if spacing is None:
        return None
    if len(spacing) < ndim:
        raise ValueError(f"case {case!r}: spacing {spacing} has fewer axes than its {ndim}D array")
    return tuple(float(s) for s in spacing[len(spacing) - ndim:])


class SegmentationMetrics:
    """Accumulates a split's predictions batch by batch; ``compute()`` returns every figure.

    ``update(pred, target, cases, indices, spacings)`` takes label maps (N, H, W). Slices of one case
    must arrive together (an evaluation loop in dataset order does that): a case is scored as soon as
    the next case starts, so memory holds one volume at a time. ``background`` is the class left out
    of the ``*_fg`` figures (None: no background class, fg = all classes). ``compute_hd95`` switches
    the surface-distance figures (HD95 and NSD) on; ``nsd_tolerance`` is tau, in the distance unit.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        class_names: list[str] | None = None,
        background: int | None = 0,
        compute_hd95: bool = True,
        nsd_tolerance: float = 1.0,
    ):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        if nsd_tolerance < 0:
            raise ValueError(f"nsd_tolerance={nsd_tolerance} must be >= 0")
        self.background = background
        self.foreground = [c for c in range(num_classes) if c != background]
        self.compute_hd95 = compute_hd95
        self.nsd_tolerance = float(nsd_tolerance)
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self._case: str | None = None
        self._spacing: tuple[float, ...] | None = None
        self._slices: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._done_cases: set[str] = set()
        self.cases: list[CaseScores] = []  # every finished case, in arrival order

    def update(
        self, pred: Tensor, target: Tensor, cases: list[str] | None = None, indices=None, spacings: list | None = None
    ) -> None:
        """``spacings``: per item, its case's voxel size (slice thickness, row, column) in mm, ordered as
        the case's stacked (slices, H, W) array; None (or a None entry): distances in pixels."""
        pred, target = pred.detach().cpu(), target.detach().cpu()
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        self.cm += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        n = pred.shape[0]
        cases = list(cases) if cases is not None else [None] * n
        indices = [int(i) for i in indices] if indices is not None else list(range(n))
        spacings = list(spacings) if spacings is not None else [None] * n
        for k in range(n):
            case = cases[k] if cases[k] is not None else f"#{len(self._done_cases) + len(self._slices)}"
            spacing = tuple(float(s) for s in spacings[k]) if spacings[k] is not None else None
            if case != self._case:
                self._finish_case()
                if case in self._done_cases:
                    raise ValueError(f"slices of case {case!r} are not contiguous in the evaluation order")
                self._case, self._spacing = case, spacing
            elif spacing != self._spacing:
                raise ValueError(f"slices of case {case!r} have different spacings: {self._spacing} and {spacing}")
            self._slices.append((indices[k], pred[k].numpy(), target[k].numpy()))

    def finish(self) -> None:
        """Score the case in progress: ``cm`` and ``cases`` then hold every case seen, in arrival order
        (what a process contributes when the cases of a split are shared between processes)."""
        self._finish_case()

    def _finish_case(self) -> None:
        if not self._slices:
            return
        self._slices.sort(key=lambda s: s[0])
        pred = np.stack([s[1] for s in self._slices]) if len(self._slices) > 1 else self._slices[0][1]
        target = np.stack([s[2] for s in self._slices]) if len(self._slices) > 1 else self._slices[0][2]
        if self.ignore_index is not None:
            # Ignored pixels count for neither side: no true positive, no false positive there.
            ignored = target == self.ignore_index
            pred = np.where(ignored, -1, pred)
            target = np.where(ignored, -1, target)
        spacing = _case_spacing(self._spacing, pred.ndim, self._case)
        record = CaseScores(self._case, spacing, [], [], [], [], [] if self.compute_hd95 else None,
                            [] if self.compute_hd95 else None)
        slice_dice, slice_empty = [], []  # per foreground class, each slice's Dice and empty reference (volumes)
        for c in self.foreground:
            p, t = pred == c, target == c
            dice, iou = _overlap(p, t)
            record.dice.append(dice)
            record.iou.append(iou)
            record.ref_empty.append(not t.any())
            record.pred_empty.append(not p.any())
            if self.compute_hd95:
                distance, surface_dice = surface_scores(p, t, self.nsd_tolerance, spacing)
                record.hd95.append(distance)
                record.nsd.append(surface_dice)
            if pred.ndim == 3:
                slice_dice.append([_overlap(p[k], t[k])[0] for k in range(len(p))])
                slice_empty.append([not t[k].any() for k in range(len(t))])
        if slice_dice:
            record.slices = [(index, [per_class[k] for per_class in slice_dice], [per_class[k] for per_class in slice_empty])
                             for k, (index, _, _) in enumerate(self._slices)]
        self.cases.append(record)
        self._done_cases.add(self._case)
        self._slices, self._case, self._spacing = [], None, None

    def distance_unit(self) -> str:
        """"mm" when the cases carry a voxel spacing, "px" when they do not (or there are none)."""
        kinds = {record.spacing is not None for record in self.cases}
        if len(kinds) > 1:
            raise ValueError("some cases have a voxel spacing and some do not: their distances have no common unit")
        return "mm" if kinds == {True} else "px"

    def _table(self, name: str) -> np.ndarray:
        # (cases, foreground classes) of one per-case figure.
        values = [getattr(record, name) for record in self.cases]
        return np.array(values, dtype=np.float64).reshape(-1, len(self.foreground))

    def _per_class_means(self, name: str) -> tuple[dict[str, float], float]:
        table = self._table(name)
        means = [_nanmean(table[:, j]) for j in range(len(self.foreground))]
        return {self.class_names[c]: v for c, v in zip(self.foreground, means)}, _nanmean(means)

    def compute(self) -> dict:
        """All figures as a JSON-able dict (NaN stays NaN; ``json.dumps`` writes it as ``NaN``).

        Keys: ``aAcc``; ``mIoU``, ``mDice``, ``mAcc``, ``mFscore``, ``mPrecision``, ``mRecall`` (all
        classes) and the same with ``_fg`` (foreground only); ``per_class``: {metric: {class: value}};
        ``num_cases``; ``num_pixels`` (labelled pixels); ``dice_per_case``: {foreground class: mean over
        cases} and ``dice_fg_per_case`` its mean over classes. With surface distances also
        ``hd95_per_case`` / ``hd95_fg`` and ``nsd_per_case`` / ``nsd_fg`` (the same means),
        ``distance_unit`` ("px" or "mm", of HD95 and of ``nsd_tolerance``), ``nsd_tolerance``,
        ``hd95_undefined`` (case-class pairs empty on both sides: NaN, not counted) and
        ``hd95_worst_case`` (pairs empty on exactly one side: HD95 set to the array's diagonal).
        """
        self._finish_case()
        scores = scores_from_confusion(self.cm)
        fg = self.foreground
        out: dict = {"aAcc": scores["aAcc"], "num_pixels": int(self.cm.sum())}
        for name in ("IoU", "Dice", "Acc", "Fscore", "Precision", "Recall"):
            values = scores[name]
            out[f"m{name}"] = _nanmean(values)
            out[f"m{name}_fg"] = _nanmean(values[fg])
        out["per_class"] = {
            name: {self.class_names[c]: float(scores[name][c]) for c in range(self.num_classes)}
            for name in ("IoU", "Dice", "Acc", "Fscore", "Precision", "Recall")
        }
        out["num_cases"] = len(self.cases)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out["dice_per_case"], out["dice_fg_per_case"] = self._per_class_means("dice")
            if self.compute_hd95:
                out["hd95_per_case"], out["hd95_fg"] = self._per_class_means("hd95")
                out["nsd_per_case"], out["nsd_fg"] = self._per_class_means("nsd")
                out["distance_unit"] = self.distance_unit()
                out["nsd_tolerance"] = self.nsd_tolerance
                empty_sides = np.array([r.ref_empty for r in self.cases], dtype=np.int64) + np.array(
                    [r.pred_empty for r in self.cases], dtype=np.int64
                )
                out["hd95_undefined"] = int((empty_sides == 2).sum())
                out["hd95_worst_case"] = int((empty_sides == 1).sum())
        return out

    def per_case_rows(self) -> list[dict]:
        """One row per (case, foreground class), cases in arrival order, with the ``PER_CASE_COLUMNS``;
        NaN where a figure is undefined (both empty) or not computed (``nsd``/``hd95`` without
        ``compute_hd95``). Distances are in ``distance_unit()``."""
        self._finish_case()
        nan = float("nan")
        rows = []
        for record in self.cases:
            for j, c in enumerate(self.foreground):
                rows.append({
                    "case": record.case,
                    "class": self.class_names[c],
                    "dice": record.dice[j],
                    "iou": record.iou[j],
                    "nsd": record.nsd[j] if record.nsd is not None else nan,
                    "hd95": record.hd95[j] if record.hd95 is not None else nan,
                    "ref_empty": record.ref_empty[j],
                    "pred_empty": record.pred_empty[j],
                })
        return rows

    def per_slice_rows(self) -> list[dict]:
        """One row per (volume slice, foreground class) with the ``PER_SLICE_COLUMNS``: each slice's Dice
        alone (NaN where the class is absent from both) and whether the reference lacks the class there.
        Empty when every case is a 2D image."""
        self._finish_case()
        return [{"case": record.case, "slice": index, "class": self.class_names[c], "dice": scores[j], "ref_empty": empty[j]}
                for record in self.cases for index, scores, empty in record.slices for j, c in enumerate(self.foreground)]


def write_per_case_csv(path: str | Path, rows: list[dict], columns: tuple[str, ...] = PER_CASE_COLUMNS) -> None:
    """Write ``per_case_rows()`` (or ``per_slice_rows()`` with ``PER_SLICE_COLUMNS``) as CSV, atomically.
    Undefined figures (NaN) are empty cells; floats are written with ``repr``, so they read back exactly."""
    path = writable(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _csv_cell(row[key]) for key in columns})
    tmp.replace(path)


def _csv_cell(value):
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return value


def is_better(value: float, best: float | None, metric: str) -> bool:
    """Whether ``value`` improves on ``best`` for ``metric`` (distances: lower is better; NSD is a
    fraction, higher is better)."""
    if value is None or math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value < best if lower_is_better(metric) else value > best
