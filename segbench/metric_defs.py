"""Every metric's name, label, unit, direction and meaning, defined once.

``segbench.engine.metrics`` computes these figures (its docstring gives the formulas and the rules for
empty structures); the trainer picks its best checkpoint by one of them, the sweep and the Ray launcher
report the headline, and the review's columns, plots and notes take their labels, directions and help
from here. A leaf (standard library only), so the torch-free report can read it.

A figure of a split is stored under its key prefixed with the split (``val_hd95_fg``); ``metric()`` and
``lower_is_better()`` accept either form.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Metric", "METRICS", "HEADLINE", "metric", "lower_is_better", "SPLITS"]

SPLITS = ("val", "test", "train")


@dataclass(frozen=True)
class Metric:
    """One figure of ``SegmentationMetrics.compute()``: how it is named, shown and compared."""

    key: str  # its key in metrics.json, log.jsonl's validation records and a run's results row (split-prefixed)
    label: str  # short name for tables and plots
    better: str  # "higher" or "lower"
    unit: str  # "" for fractions and counts; "distance": mm with a voxel spacing, else px (``distance_unit``)
    help: str
    selectable: bool = True  # a candidate for train.best_metric (a count of failures is not)

    @property
    def lower_is_better(self) -> bool:
        return self.better == "lower"


def _overlap(name: str, what: str, suffix: str) -> list[Metric]:
    return [Metric(f"m{name}{s}", f"m{name}{s}", "higher", "", f"mean {what} over {classes} (dataset confusion "
                   "matrix, MMSegmentation's definition)") for s, classes in (("", "all classes"), ("_fg", "foreground classes"))]


_ALL = [
    Metric("aAcc", "aAcc", "higher", "", "share of labelled pixels predicted right"),
    *_overlap("IoU", "IoU", ""), *_overlap("Dice", "Dice", ""), *_overlap("Acc", "recall", ""),
    *_overlap("Fscore", "F1", ""), *_overlap("Precision", "precision", ""), *_overlap("Recall", "recall", ""),
    Metric("dice_fg_per_case", "Dice", "higher", "", "mean foreground Dice per case (the medical convention: each case "
           "scored on its own, a volume with its slices stacked), averaged over foreground classes and cases"),
    Metric("hd95_fg", "HD95", "lower", "distance", "95th-percentile Hausdorff distance (MedPy's pooled definition) per "
           "case and foreground class; a missed or invented structure counts as the case's diagonal, a structure "
           "absent from both is left out"),
    Metric("nsd_fg", "NSD", "higher", "", "normalised surface distance (surface Dice) at eval.nsd_tolerance per case "
           "and foreground class; a missed or invented structure scores 0"),
    Metric("hd95_worst_case", "Missed/invented", "lower", "", "case-class pairs where a structure was missed or invented "
           "(HD95 the case's diagonal there, Dice and NSD 0)", selectable=False),
]
METRICS: dict[str, Metric] = {m.key: m for m in _ALL}
# The figure each review run picks its best checkpoint by, the sweep's progress shows and the training curves
# plot; the default of ``train.best_metric``.
HEADLINE = "dice_fg_per_case"


def _bare(key: str) -> str:
    split, _, rest = key.partition("_")
    return rest if split in SPLITS and rest in METRICS else key


def metric(key: str) -> Metric:
    """The definition of ``key`` (bare, or prefixed with a split); KeyError naming the known keys."""
    found = METRICS.get(_bare(key))
    if found is None:
        raise KeyError(f"no metric {key!r}; known: {', '.join(METRICS)}")
    return found


def lower_is_better(key: str) -> bool:
    """Distances improve downwards; overlaps, NSD and accuracies upwards."""
    return metric(key).lower_is_better
