"""The printable summary of a loaded dataset: sizes, splits and the class histogram per split.

Printed by ``segbench check`` and saved with every run, so a reader of the benchmark report can see
what the models were trained on (e.g. that grey matter is 40 % of the val pixels).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["DataReport", "SplitStats"]


@dataclass
class SplitStats:
    cases: int  # images, or volumes (a slab of the one volume counts as one case)
    slices: int  # 2D items served (images, or volume slices)
    class_pixels: list[int]  # pixels per class over the split's slices
    ignored_pixels: int = 0  # pixels equal to ignore_index

    @property
    def labelled_pixels(self) -> int:
        return sum(self.class_pixels)


@dataclass
class DataReport:
    name: str
    format: str
    source: str
    num_classes: int
    class_names: list[str]
    in_channels: int
    ignore_index: int
    image_sizes: tuple[tuple[int, int], tuple[int, int]]  # smallest and largest (H, W)
    normalization: str
    splits: dict[str, SplitStats] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    train_slices_per_epoch: int | None = None  # after empty-slice subsampling, when it applies

    def class_fractions(self, split: str) -> list[float]:
        stats = self.splits[split]
        total = max(stats.labelled_pixels, 1)
        return [count / total for count in stats.class_pixels]

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{name} {s.cases} case(s) / {s.slices} slice(s)" for name, s in self.splits.items()]
        return (
            f"{self.name}: {self.num_classes} classes, {self.in_channels} channel(s), "
            + "; ".join(parts)
            + (f"; {len(self.notices)} notice(s)" if self.notices else "")
        )

    def __str__(self) -> str:
        (h0, w0), (h1, w1) = self.image_sizes
        sizes = f"{h0}x{w0}" if (h0, w0) == (h1, w1) else f"{h0}x{w0} .. {h1}x{w1}"
        lines = [
            f"dataset      {self.name} ({self.format}) from {self.source}",
            f"classes      {self.num_classes}: {', '.join(self.class_names)}  (ignore_index {self.ignore_index})",
            f"images       {self.in_channels} channel(s), H x W {sizes}, normalisation: {self.normalization}",
        ]
        for name, stats in self.splits.items():
            line = f"{name:<12} {stats.cases} case(s), {stats.slices} slice(s)"
            if name == "train" and self.train_slices_per_epoch not in (None, stats.slices):
                line += f" ({self.train_slices_per_epoch} served per epoch after subsampling empty slices)"
            lines.append(line)
        width = max([len(n) for n in self.class_names] + [5])
        header = f"{'class':<{width}}  " + "  ".join(f"{name:>10}" for name in self.splits)
        lines += ["", "class histogram (share of labelled pixels per split)", header]
        for k, class_name in enumerate(self.class_names):
            cells = []
            for split in self.splits:
                fraction = self.class_fractions(split)[k]
                cells.append(f"{100 * fraction:9.2f}%")
            lines.append(f"{class_name:<{width}}  " + "  ".join(cells))
        ignored = [f"{n}: {s.ignored_pixels}" for n, s in self.splits.items() if s.ignored_pixels]
        if ignored:
            lines.append(f"ignored pixels  {', '.join(ignored)}")
        absent = [
            f"{self.class_names[k]} absent from {name}"
            for name, stats in self.splits.items()
            for k, count in enumerate(stats.class_pixels)
            if count == 0
        ]
        if absent:
            lines.append("warning: " + "; ".join(absent))
        if self.notices:
            lines += ["", "notices:"] + [f"  - {n}" for n in self.notices]
        return "\n".join(lines)
