"""The review's evidence: every run's per-case scores, and what ``segbench.stats`` says about them.

**Units.** The statistics resample the validation split's *cases* (an image, or a volume with its slices
scored together), the unit Metrics Reloaded asks for. A unit's score is the mean of its foreground
classes' Dice (a class absent from both prediction and reference is skipped; a case where every class
is absent has no score). When the split holds a single volume (the built-in ``brain-mri`` slab) there is
one case and nothing to resample: the units become that volume's slices, each scored alone, and the
report says so: such intervals and tests describe slices of one subject, not new subjects.

**Per architecture** (a row of the table: one architecture and start): the mean over its runs and units
with a 95% hierarchical bootstrap interval (runs, then units within a run: ``hierarchical_bootstrap_ci``;
one run is the plain case bootstrap). **Between architectures**: each unit averaged over the runs
(``case_means``), the best by mean, every other one Wilcoxon-tested against it on the common units,
Holm-corrected (``top_group``); ranking robustness by resampling the common units (``rank_bootstrap``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from segbench import stats
from segbench.jsonio import write_json
from segbench.run_files import per_case_file, per_slice_file, writable

__all__ = ["RunScores", "Evidence", "read_run_scores", "unit_scores", "gather", "write_evidence", "STATISTICS_FILE",
           "PER_CASE_FILE"]

STATISTICS_FILE = "statistics.json"  # in OUT/report/: the evidence, as the report shows it
PER_CASE_FILE = "per_case.csv"  # in OUT/report/: every run's per-case rows, with its architecture and run
ALPHA = 0.05
CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class RunScores:
    """One run's per-(case, class) and per-(slice, class) Dice rows of a split, as its files hold them."""

    cases: list[dict]  # case, class, dice (float or NaN)
    slices: list[dict]  # case, slice, class, dice


def _read_rows(path: Path, keys: tuple[str, ...]) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{**{k: row[k] for k in keys}, "dice": float(row["dice"]) if row["dice"] else math.nan} for row in rows]


def read_run_scores(run_dir: str | Path, split: str = "val") -> RunScores:
    """A run's ``per_case_<split>.csv`` and ``per_slice_<split>.csv`` (each empty when absent)."""
    run_dir = Path(run_dir)
    return RunScores(_read_rows(run_dir / per_case_file(split), ("case", "class")),
                     _read_rows(run_dir / per_slice_file(split), ("case", "slice", "class")))


def _mean_over_classes(rows: list[dict], key) -> dict[str, float]:
    by_unit: dict[str, list[float]] = {}
    for row in rows:
        by_unit.setdefault(key(row), []).append(row["dice"])
    out = {}
    for unit, values in by_unit.items():
        finite = [v for v in values if not math.isnan(v)]
        out[unit] = math.fsum(finite) / len(finite) if finite else math.nan
    return out


def unit_scores(scores: RunScores, unit: str) -> dict[str, float]:
    """unit id -> mean foreground Dice: ``unit`` "case" (the case id) or "slice" (``case#slice``)."""
    if unit == "slice":
        return _mean_over_classes(scores.slices, lambda r: f"{r['case']}#{r['slice']}")
    return _mean_over_classes(scores.cases, lambda r: r["case"])


@dataclass(frozen=True)
class Evidence:
    """What the review can say about accuracy beyond one number per architecture."""

    metric: str  # what a unit's score is
    unit: str  # "case" or "slice"
    n_cases: int  # distinct validation cases over every run
    units: dict[str, int]  # architecture -> distinct units with a score
    runs: dict[str, int]  # architecture -> runs with per-case scores
    intervals: dict[str, stats.Interval]  # architecture -> mean with its hierarchical bootstrap CI
    top: stats.TopGroup | None  # None with fewer than two architectures
    ranks: stats.RankStability | None  # None with fewer than two architectures or two common units
    notes: list[str] = field(default_factory=list)

    @property
    def one_subject(self) -> bool:
        return self.unit == "slice"


def gather(per_arch: dict[str, dict[str, RunScores]]) -> Evidence | None:
    """The evidence from ``per_arch`` (architecture -> run name -> its scores); None without any score."""
    per_arch = {arch: {run: s for run, s in runs.items() if s.cases} for arch, runs in per_arch.items()}
    per_arch = {arch: runs for arch, runs in per_arch.items() if runs}
    if not per_arch:
        return None
    cases = {row["case"] for runs in per_arch.values() for s in runs.values() for row in s.cases}
    has_slices = all(s.slices for runs in per_arch.values() for s in runs.values())
    unit = "slice" if len(cases) == 1 and has_slices else "case"
    scores = {arch: {run: unit_scores(s, unit) for run, s in runs.items()} for arch, runs in per_arch.items()}
    intervals = {arch: stats.hierarchical_bootstrap_ci(runs, confidence=CONFIDENCE, n_resamples=RESAMPLES)
                 for arch, runs in scores.items()}
    means = {arch: stats.case_means(runs) for arch, runs in scores.items()}
    units = {arch: sum(not math.isnan(v) for v in m.values()) for arch, m in means.items()}
    top = ranks = None
    if len(means) >= 2:
        top = stats.top_group(means, alpha=ALPHA, confidence=CONFIDENCE, n_resamples=RESAMPLES)
        common = set.intersection(*({u for u, v in m.items() if not math.isnan(v)} for m in means.values()))
        if len(common) >= 2:
            ranks = stats.rank_bootstrap(means, n_resamples=RESAMPLES)
    notes = []
    if unit == "slice":
        notes.append(f"the validation split holds one volume ({next(iter(cases))}): the units are its slices, "
                     "so intervals and tests describe slices of one subject, not new subjects")
    return Evidence(metric="mean foreground Dice", unit=unit, n_cases=len(cases), units=units,
                    runs={arch: len(runs) for arch, runs in scores.items()}, intervals=intervals, top=top,
                    ranks=ranks, notes=notes)


def write_evidence(evidence: Evidence | None, per_arch: dict[str, dict[str, RunScores]], report_dir: str | Path) -> None:
    """``statistics.json`` (the evidence) and ``per_case.csv`` (every run's per-case rows) in ``report_dir``."""
    report_dir = Path(report_dir)
    with open(writable(report_dir / PER_CASE_FILE), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arch", "run", "case", "class", "dice"])
        for arch, runs in per_arch.items():
            for run, scores in runs.items():
                writer.writerows([arch, run, r["case"], r["class"], "" if math.isnan(r["dice"]) else repr(r["dice"])]
                                 for r in scores.cases)
    if evidence is None:
        (report_dir / STATISTICS_FILE).unlink(missing_ok=True)
        return
    top = evidence.top
    write_json({
        "metric": evidence.metric, "unit": evidence.unit, "n_cases": evidence.n_cases, "alpha": ALPHA,
        "confidence": CONFIDENCE, "resamples": RESAMPLES, "notes": evidence.notes,
        "architectures": {
            arch: {"mean": interval.mean, "ci_low": interval.low, "ci_high": interval.high,
                   "units": evidence.units[arch], "runs": evidence.runs[arch]}
            for arch, interval in evidence.intervals.items()
        },
        "top_group": None if top is None else {
            "best": top.best, "members": list(top.members),
            "tests": {r.name: {"n_paired": r.n_paired, "p": r.pvalue, "p_holm": r.adjusted_pvalue, "tested": r.tested,
                               "in_top_group": r.in_top_group, "reason": r.reason} for r in top.results},
        },
        "ranks": None if evidence.ranks is None else {
            "observed": evidence.ranks.observed_rank,
            "counts": {a: {str(k): v for k, v in c.items()} for a, c in evidence.ranks.rank_counts.items()},
            "kendall_tau_median": evidence.ranks.tau_median, "kendall_tau_q1": evidence.ranks.tau_q1,
            "kendall_tau_q3": evidence.ranks.tau_q3, "common_units": evidence.ranks.n_cases,
        },
    }, report_dir / STATISTICS_FILE)
