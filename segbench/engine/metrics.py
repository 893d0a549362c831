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

**Per case (the medical convention)**: the slices of one case (items sharing ``case``) are stacked
in ``index`` order into a volume and compared in 3D; a 2D image is its own case. For every
foreground class, Dice per case and HD95 per case (95th percentile of the symmetric surface
distances, in pixels/voxels, as MedPy's ``hd95``); then means over cases, then over classes.
A case where a class is absent from both prediction and truth has NaN Dice for that class (no
evidence either way; MONAI's ``ignore_empty``); HD95 is NaN when either side is empty (the distance
is undefined). NaN entries are skipped by the means and counted in ``hd95_undefined``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

__all__ = ["SCALAR_METRICS", "confusion_matrix", "scores_from_confusion", "dice_per_class", "hd95", "SegmentationMetrics", "is_better"]

# The single-number figures of ``SegmentationMetrics.compute`` (candidates for ``train.best_metric``).
SCALAR_METRICS = (
    "aAcc",
    *(f"m{name}{suffix}" for name in ("IoU", "Dice", "Acc", "Fscore", "Precision", "Recall") for suffix in ("", "_fg")),
    "dice_fg_per_case",
    "hd95_fg",
)


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


def dice_per_class(pred: np.ndarray, target: np.ndarray, classes: list[int]) -> list[float]:
    """Dice of each class in one case (any dimensionality); NaN where the class is absent from both."""
    out = []
    for c in classes:
        p, t = pred == c, target == c
        den = int(p.sum()) + int(t.sum())
        out.append(2.0 * int((p & t).sum()) / den if den else float("nan"))
    return out


def _surface(mask: np.ndarray) -> np.ndarray:
    # Foreground voxels with at least one face-neighbour in the background (or on the array border).
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def hd95(pred: np.ndarray, target: np.ndarray) -> float:
    """95th-percentile symmetric Hausdorff distance between two binary masks, in pixels/voxels.

    Distances from every surface point of one mask to the nearest surface point of the other, both
    directions pooled (MedPy ``hd95``). NaN when either mask is empty.
    """
    pred, target = pred.astype(bool), target.astype(bool)
    if not pred.any() or not target.any():
        return float("nan")
    pred_surface, target_surface = _surface(pred), _surface(target)
    to_target = ndimage.distance_transform_edt(~target_surface)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface)[target_surface]
    return float(np.percentile(np.concatenate([to_target, to_pred]), 95))


class SegmentationMetrics:
    """Accumulates a split's predictions batch by batch; ``compute()`` returns every figure.

    ``update(pred, target, cases, indices)`` takes label maps (N, H, W). Slices of one case must
    arrive together (an evaluation loop in dataset order does that): a case is scored as soon as the
    next case starts, so memory holds one volume at a time. ``background`` is the class left out of
    the ``*_fg`` figures (None: no background class, fg = all classes).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        class_names: list[str] | None = None,
        background: int | None = 0,
        compute_hd95: bool = True,
    ):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.background = background
        self.foreground = [c for c in range(num_classes) if c != background]
        self.compute_hd95 = compute_hd95
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self._case: str | None = None
        self._slices: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._done_cases: set[str] = set()
        self.case_dice: list[list[float]] = []  # per case, per foreground class
        self.case_hd95: list[list[float]] = []

    def update(self, pred: Tensor, target: Tensor, cases: list[str] | None = None, indices=None) -> None:
        pred, target = pred.detach().cpu(), target.detach().cpu()
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        self.cm += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        n = pred.shape[0]
        cases = list(cases) if cases is not None else [None] * n
        indices = [int(i) for i in indices] if indices is not None else list(range(n))
        for k in range(n):
            case = cases[k] if cases[k] is not None else f"#{len(self._done_cases) + len(self._slices)}"
            if case != self._case:
                self._finish_case()
                if case in self._done_cases:
                    raise ValueError(f"slices of case {case!r} are not contiguous in the evaluation order")
                self._case = case
            self._slices.append((indices[k], pred[k].numpy(), target[k].numpy()))

    def finish(self) -> None:
        """Score the case in progress: ``cm``, ``case_dice`` and ``case_hd95`` then hold every case seen, in
        arrival order (what a process contributes when the cases of a split are shared between processes)."""
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
        self.case_dice.append(dice_per_class(pred, target, self.foreground))
        if self.compute_hd95:
            self.case_hd95.append([hd95(pred == c, target == c) for c in self.foreground])
        self._done_cases.add(self._case)
        self._slices, self._case = [], None

    def compute(self) -> dict:
        """All figures as a JSON-able dict (NaN stays NaN; ``json.dumps`` writes it as ``NaN``).

        Keys: ``aAcc``; ``mIoU``, ``mDice``, ``mAcc``, ``mFscore``, ``mPrecision``, ``mRecall`` (all
        classes) and the same with ``_fg`` (foreground only); ``per_class``: {metric: {class: value}};
        ``dice_per_case`` / ``hd95_per_case``: {foreground class: mean over cases};
        ``dice_fg_per_case`` / ``hd95_fg``: their means over foreground classes; ``num_cases``,
        ``hd95_undefined`` (case-class pairs with an empty side); ``num_pixels`` (labelled pixels).
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
        out["num_cases"] = len(self.case_dice)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            dice = np.array(self.case_dice, dtype=np.float64).reshape(-1, len(fg))
            per_class_dice = [_nanmean(dice[:, j]) for j in range(len(fg))]
            out["dice_per_case"] = {self.class_names[c]: v for c, v in zip(fg, per_class_dice)}
            out["dice_fg_per_case"] = _nanmean(per_class_dice)
            if self.compute_hd95:
                dist = np.array(self.case_hd95, dtype=np.float64).reshape(-1, len(fg))
                per_class_hd = [_nanmean(dist[:, j]) for j in range(len(fg))]
                out["hd95_per_case"] = {self.class_names[c]: v for c, v in zip(fg, per_class_hd)}
                out["hd95_fg"] = _nanmean(per_class_hd)
                out["hd95_undefined"] = int(np.isnan(dist).sum())
        return out


def is_better(value: float, best: float | None, metric: str) -> bool:
    """Whether ``value`` improves on ``best`` for ``metric`` (distances: lower is better)."""
    if value is None or math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value < best if metric.startswith("hd95") else value > best
