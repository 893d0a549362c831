"""A deployment budget (``segbench run --latency-budget 20ms --memory-budget 300MB --flops-budget 5``): which
architectures fit it on the machine that measured them, and which fell outside and by how much.

The costs are the review table's, one producer each (``segbench.bench.measure.cost``): batch-1 latency as
``segbench predict`` runs the network (BatchNorm folded, the run's precision), the inference memory of a
batch-1 forward pass, FLOPs at the profile's input size; over an architecture's runs, the median. An
architecture fits when every budgeted cost's median is at or below its limit; one whose cost was not measured
is not shown to fit and is named apart. The accuracy comparison is then run over the architectures that fit,
so the verdict's statistics (simultaneous intervals, family-wise error) are those of that comparison alone.
Latency and memory are of this machine: another machine, another answer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["DEPLOYMENT_FILE", "DeploymentBudget", "Limit", "Excess", "DeploymentSplit", "LIMITS", "parse_latency", "parse_memory", "parse_flops",
           "split_by_budget"]


DEPLOYMENT_FILE = "deployment_budget.json"  # in OUT/report/: the budget, which architectures fit, the comparison's answer


@dataclass(frozen=True)
class Limit:
    """A budgeted cost: its table key, what it is called, its unit and how many digits it is shown with."""

    key: str
    what: str
    unit: str
    digits: int


LIMITS = {"latency_ms": Limit("latency_ms", "latency", "ms", 2),
          "onnx_latency_ms": Limit("onnx_latency_ms", "ONNX Runtime latency", "ms", 2),
          "infer_peak_mb": Limit("infer_peak_mb", "inference memory", "MB", 1),
          "gflops": Limit("gflops", "FLOPs", "GFLOPs", 2)}  # fmt: skip


@dataclass(frozen=True)
class DeploymentBudget:
    """The limits, each in its table unit; None: not budgeted."""

    latency_ms: float | None = None
    infer_peak_mb: float | None = None
    gflops: float | None = None
    latency_engine: str = "torch"  # "onnx": the latency limit reads the ONNX Runtime column (--latency-engine onnx)

    @property
    def latency_key(self) -> str:
        """The table column the latency limit reads (and the accuracy-vs-latency figure draws)."""
        return "onnx_latency_ms" if self.latency_engine == "onnx" else "latency_ms"

    def limits(self) -> list[tuple[Limit, float]]:
        return [(LIMITS[key], value) for key, value in
                ((self.latency_key, self.latency_ms), ("infer_peak_mb", self.infer_peak_mb), ("gflops", self.gflops))
                if value is not None]  # fmt: skip

    def __bool__(self) -> bool:
        return bool(self.limits())

    def describe(self) -> str:
        return ", ".join(f"{limit.what} <= {value:g} {limit.unit}" for limit, value in self.limits())


def _parse(text: str | float, units: dict[str, float], default: str, what: str) -> float:
    if isinstance(text, (int, float)):
        value, factor = float(text), 1.0
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([a-zA-Z]*)\s*", str(text))
        unit = (match[2] or default).lower() if match else ""
        if not match or unit not in units:
            raise ValueError(f"{what} budget {text!r}: give a positive number with a unit ({', '.join(units)}), "
                             f"e.g. 20{default}")  # fmt: skip
        value, factor = float(match[1]), units[unit]
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{what} budget must be positive and finite, got {text!r}")
    return value * factor


def parse_latency(text: str | float) -> float:
    """"20ms", "0.02s", "20" (milliseconds) -> milliseconds."""
    return _parse(text, {"ms": 1.0, "s": 1000.0, "us": 1e-3}, "ms", "latency")


def parse_memory(text: str | float) -> float:
    """"300MB", "1.5GB", "300" (MB) -> MB (10^6 bytes, as the table's column)."""
    return _parse(text, {"mb": 1.0, "gb": 1000.0, "kb": 1e-3}, "mb", "memory")


def parse_flops(text: str | float) -> float:
    """"5", "5GFLOPs", "500MFLOPs" -> GFLOPs (as the table's column)."""
    return _parse(text, {"gflops": 1.0, "g": 1.0, "mflops": 1e-3, "m": 1e-3, "tflops": 1e3, "t": 1e3}, "gflops", "FLOPs")


@dataclass(frozen=True)
class Excess:
    """One budgeted cost of one architecture against its limit; ``low``/``high``: the range over its runs."""

    limit: Limit
    value: float
    budget: float
    low: float | None = None
    high: float | None = None

    @property
    def over(self) -> float:
        return self.value - self.budget

    @property
    def straddles(self) -> bool:
        """The runs' range crosses the limit: another run could have landed on the other side."""
        return self.low is not None and self.high is not None and self.low <= self.budget < self.high


@dataclass(frozen=True)
class DeploymentSplit:
    """Architectures (table labels) that fit, fell outside (each with the costs that exceed), could not be
    placed (a budgeted cost not measured, with which), and those whose range over runs crosses a limit."""

    budget: DeploymentBudget
    inside: list[str] = field(default_factory=list)
    outside: list[tuple[str, list[Excess]]] = field(default_factory=list)
    unmeasured: list[tuple[str, list[str]]] = field(default_factory=list)
    close: list[tuple[str, Excess]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # no successful run: no cost; named by the evidence


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def split_by_budget(table: list[dict], budget: DeploymentBudget) -> DeploymentSplit:
    """Place every architecture of ``table`` (aggregated rows: medians with ``_min``/``_max``) against ``budget``."""
    split = DeploymentSplit(budget)
    for row in table:
        arch = row["arch"]
        if not row.get("runs"):
            split.failed.append(arch)
            continue
        missing, excess = [], []
        for limit, value in budget.limits():
            cost = row.get(limit.key)
            if not _number(cost):
                missing.append(limit.what)
                continue
            low, high = row.get(f"{limit.key}_min"), row.get(f"{limit.key}_max")
            check = Excess(limit, float(cost), value, low if _number(low) else None, high if _number(high) else None)
            if check.over > 0:
                excess.append(check)
            if check.straddles:
                split.close.append((arch, check))
        if excess:  # one measured cost over its limit is enough
            split.outside.append((arch, excess))
        elif missing:
            split.unmeasured.append((arch, missing))
        else:
            split.inside.append(arch)
    return split
