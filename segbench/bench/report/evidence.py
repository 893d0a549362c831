"""The review's evidence: every run's per-case scores, turned into one score per unit, and what
``segbench.comparison`` says about them. The table's headline accuracy, its interval, the comparisons,
the ranking and the verdict all read this one quantity.

**A unit's score** (Metrics Reloaded's rules for empty structures, applied before any pairing): the mean
Dice of the foreground classes present in the reference or the prediction; a unit where no foreground
class is present in either scores 1 (nothing to find, nothing found: a correct empty prediction). So a
structure invented on an empty reference scores 0 against the 1 of the model that predicted nothing,
and every architecture is scored on every unit.

**Units.** The validation split's cases (an image, or a volume with its slices scored together). When the
split holds a single volume (the built-in ``brain-mri`` slab) the units are blocks of contiguous slices:
neighbouring slices are correlated (the built-in slab's seed differences: lag-1 autocorrelation 0.53), so
single slices are not independent units; ``BLOCKS`` blocks of at least ``BLOCK_SLICES`` slices each
(non-overlapping block bootstrap, Carlstein 1986), or no inferential claim when the volume is too short.

**Runs.** Seeds are crossed with units (every seed scores every unit); with cross-validation each unit is
scored by the fold model that held it out, so seed s of an architecture is its seed-s model of every fold.
A seed missing a fold (a failed run) is left out of that architecture's figures and named; an
architecture with no complete seed is failed and named, never compared.

**The floor**: predicting background everywhere, scored by the same rule (1 on a unit whose reference is
empty, else 0).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segbench import comparison
from segbench.jsonio import write_json
from segbench.run_files import per_case_file, per_slice_file, writable

__all__ = ["RunKey", "RunScores", "Evidence", "read_run_scores", "unit_scores", "floor_scores", "gather",
           "write_evidence", "STATISTICS_FILE", "PER_CASE_FILE", "METRIC", "MARGIN", "evidence_figures"]

STATISTICS_FILE = "statistics.json"  # in OUT/report/: the evidence, as the report shows it
PER_CASE_FILE = "per_case.csv"  # in OUT/report/: every run's per-case rows, with its architecture and run
METRIC = "mean foreground Dice"  # what a unit's score is
ALPHA = 0.05
RESAMPLES = 2000
MARGIN = 0.01  # default equivalence margin, in Dice (``segbench run --margin``)
BLOCKS = comparison.MIN_UNITS  # a lone volume's slices form this many blocks...
BLOCK_SLICES = 8  # ...of at least this many contiguous slices (fewer slices: fewer blocks, no inference)


@dataclass(frozen=True, order=True)
class RunKey:
    """A run among its architecture's runs."""

    fold: int | None
    seed: int

    @property
    def name(self) -> str:
        return (f"fold {self.fold} " if self.fold is not None else "") + f"seed {self.seed}"


@dataclass(frozen=True)
class RunScores:
    """One run's per-(case, class) and per-(slice, class) rows of a split, as its files hold them."""

    cases: list[dict]  # case, class, dice (float or NaN), ref_empty (bool or None when not recorded)
    slices: list[dict]  # case, slice, class, dice, ref_empty


def _read_rows(path: Path, keys: tuple[str, ...]) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{**{k: row[k] for k in keys}, "dice": float(row["dice"]) if row["dice"] else math.nan,
             "ref_empty": {"True": True, "False": False}.get(row.get("ref_empty"))} for row in rows]


def read_run_scores(run_dir: str | Path, split: str = "val") -> RunScores:
    """A run's ``per_case_<split>.csv`` and ``per_slice_<split>.csv`` (each empty when absent)."""
    run_dir = Path(run_dir)
    return RunScores(_read_rows(run_dir / per_case_file(split), ("case", "class")),
                     _read_rows(run_dir / per_slice_file(split), ("case", "slice", "class")))


def _unit_of(row: dict, unit: str) -> str:
    return f"{row['case']}#{row['slice']}" if unit == "slice" else row["case"]


def unit_scores(scores: RunScores, unit: str) -> dict[str, float]:
    """unit id -> its score (module docstring): ``unit`` "case" (the case id) or "slice" (``case#slice``)."""
    by_unit: dict[str, list[float]] = {}
    for row in scores.slices if unit == "slice" else scores.cases:
        by_unit.setdefault(_unit_of(row, unit), []).append(row["dice"])
    out = {}
    for key, values in by_unit.items():
        present = [v for v in values if not math.isnan(v)]  # NaN: the class is in neither
        out[key] = math.fsum(present) / len(present) if present else 1.0
    return out


def floor_scores(scores: RunScores, unit: str) -> dict[str, float] | None:
    """unit id -> the score of predicting background everywhere: 1 where the reference is empty, else 0.
    None when the rows do not record whether the reference was empty (files of an older segbench)."""
    empty: dict[str, bool] = {}
    for row in scores.slices if unit == "slice" else scores.cases:
        if row["ref_empty"] is None:
            return None
        key = _unit_of(row, unit)
        empty[key] = empty.get(key, True) and row["ref_empty"]
    return {key: 1.0 if value else 0.0 for key, value in empty.items()}


@dataclass(frozen=True)
class Evidence:
    """What the review can say about accuracy: one score per unit, compared across architectures."""

    metric: str
    unit: str  # "case" or "block" (contiguous slices of a lone volume)
    n_cases: int  # distinct validation cases over every run
    n_units: int
    block_slices: tuple[int, ...]  # slices per block (a lone volume); empty otherwise
    volume: str  # the lone volume's case id; empty otherwise
    folds: int  # cross-validation folds (0: none)
    seeds: dict[str, int]  # architecture -> complete seeds compared
    comparison: comparison.Comparison | None  # None when no architecture has a complete seed
    failures: list[str] = field(default_factory=list)  # what failed and was left out, as phrases
    floor_missing: bool = False  # the rows did not say where the reference was empty

    @property
    def one_seed(self) -> bool:
        return bool(self.seeds) and max(self.seeds.values()) == 1


def _blocks(n_slices: int) -> list[np.ndarray]:
    count = max(1, min(BLOCKS, n_slices // BLOCK_SLICES))
    return np.array_split(np.arange(n_slices), count)


def _unit_matrix(per_seed: dict[int, dict[str, float]], units: list[str], blocks: list[np.ndarray] | None) -> np.ndarray:
    x = np.array([[scores[u] for u in units] for scores in per_seed.values()])
    return x if blocks is None else np.stack([x[:, block].mean(axis=1) for block in blocks], axis=1)


def _complete_seeds(arch: str, runs: dict[RunKey, RunScores | None], unit: str, units: list[str],
                    failures: list[str]) -> dict[int, dict[str, float]]:
    """Seed -> unit scores over every fold, for the seeds that cover every unit; the others named in ``failures``."""
    per_seed: dict[int, dict[str, float]] = {}
    broken: dict[int, list[str]] = {}
    for key, scores in sorted(runs.items()):
        if scores is None or not scores.cases:
            broken.setdefault(key.seed, []).append(key.name)
        else:
            per_seed.setdefault(key.seed, {}).update(unit_scores(scores, unit))
    complete = {}
    for seed, scores in per_seed.items():
        if seed not in broken and set(units) <= scores.keys():
            complete[seed] = scores
        elif seed not in broken:
            broken[seed] = ["its runs do not score every validation unit"]
    if broken and complete:
        failures += [f"{arch} seed {seed} ({', '.join(what)} failed; that seed is left out)" for seed, what in sorted(broken.items())]
    elif broken:
        failures.append(f"{arch} (every seed has a failed run: {', '.join(sorted({w for ws in broken.values() for w in ws}))}; "
                        "left out of every comparison)")
    return complete


def gather(per_arch: dict[str, dict[RunKey, RunScores | None]], *, margin: float = MARGIN, alpha: float = ALPHA,
           n_resamples: int = RESAMPLES) -> Evidence | None:
    """The evidence from ``per_arch`` (architecture -> run -> its scores, None for a failed run); None when
    no run left per-case scores."""
    scored = [s for runs in per_arch.values() for s in runs.values() if s is not None and s.cases]
    if not scored:
        return None
    cases = sorted({row["case"] for s in scored for row in s.cases})
    lone_volume = len(cases) == 1 and all(s.slices for s in scored)
    unit = "slice" if lone_volume else "case"
    units = sorted({_unit_of(row, unit) for s in scored for row in (s.slices if lone_volume else s.cases)},
                   key=lambda u: (u.rsplit("#", 1)[0], int(u.rsplit("#", 1)[1])) if lone_volume else u)
    blocks = _blocks(len(units)) if lone_volume else None
    failures: list[str] = []
    matrices = {}
    for arch, runs in per_arch.items():
        complete = _complete_seeds(arch, runs, unit, units, failures)
        if complete:
            matrices[arch] = _unit_matrix(complete, units, blocks)
    floor = None
    floors = [floor_scores(s, unit) for s in scored]
    if all(f is not None for f in floors):
        merged = {u: v for f in floors for u, v in f.items()}
        floor = _unit_matrix({0: merged}, units, blocks)[0] if set(units) <= merged.keys() else None
    folds = {key.fold for runs in per_arch.values() for key in runs} - {None}
    result = comparison.compare(matrices, floor=floor, margin=margin, alpha=alpha, n_resamples=n_resamples) if matrices else None
    return Evidence(
        metric=METRIC, unit="block" if lone_volume else "case", n_cases=len(cases),
        n_units=len(blocks) if blocks is not None else len(units),
        block_slices=tuple(len(b) for b in blocks) if blocks is not None else (),
        volume=cases[0] if lone_volume else "", folds=len(folds),
        seeds={arch: x.shape[0] for arch, x in matrices.items()}, comparison=result, failures=failures,
        floor_missing=floor is None)


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def evidence_figures(evidence: Evidence | None) -> dict[str, dict]:
    """Per architecture, the table's figures from the evidence (the keys of ``columns.py``): the headline
    accuracy with its interval, the difference from the leader with its simultaneous interval, the answer."""
    comparison = evidence.comparison if evidence is not None else None
    if comparison is None:
        return {}
    out = {}
    for s in comparison.standings:
        figures = dict(val_unit_dice=s.mean, val_unit_dice_low=_number(s.low), val_unit_dice_high=_number(s.high))
        if s.status != "leader":
            figures.update(val_vs_leader=s.diff, val_vs_leader_low=_number(s.diff_low),
                           val_vs_leader_high=_number(s.diff_high))
        if comparison.inferential and len(comparison.standings) > 1:
            figures["val_answer"] = "not shown learned" if not s.learned else s.status
        out[s.name] = figures
    return out


def write_evidence(evidence: Evidence | None, per_arch: dict[str, dict[RunKey, RunScores | None]],
                   report_dir: str | Path) -> None:
    """``statistics.json`` (the evidence) and ``per_case.csv`` (every run's per-case rows) in ``report_dir``."""
    report_dir = Path(report_dir)
    with open(writable(report_dir / PER_CASE_FILE), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arch", "run", "case", "class", "dice", "ref_empty"])
        for arch, runs in per_arch.items():
            for key, scores in runs.items():
                writer.writerows([arch, key.name, r["case"], r["class"], "" if math.isnan(r["dice"]) else repr(r["dice"]),
                                  "" if r["ref_empty"] is None else r["ref_empty"]] for r in (scores.cases if scores else []))
    if evidence is None:
        (report_dir / STATISTICS_FILE).unlink(missing_ok=True)
        return
    c = evidence.comparison
    write_json({
        "metric": evidence.metric, "unit": evidence.unit, "n_cases": evidence.n_cases, "n_units": evidence.n_units,
        "block_slices": list(evidence.block_slices), "folds": evidence.folds, "seeds": evidence.seeds,
        "failures": evidence.failures, "alpha": ALPHA, "resamples": RESAMPLES,
        "comparison": None if c is None else {
            "margin": c.margin, "inferential": c.inferential, "critical_value": _number(c.critical),
            "floor_mean": _number(c.floor_mean), "leader": c.leader, "best": c.best, "best_set": list(c.best_set),
            "architectures": {s.name: {
                "mean": s.mean, "ci_low": _number(s.low), "ci_high": _number(s.high), "seeds": s.seeds,
                "status": s.status, "difference": s.diff, "difference_low": _number(s.diff_low),
                "difference_high": _number(s.diff_high), "detectable_difference": _number(s.detectable),
                "learned": s.learned, "floor_difference_low": _number(s.floor_low), "in_best_set": s.in_best_set,
                "first_share": _number(s.first_share)} for s in c.standings},
        },
    }, report_dir / STATISTICS_FILE)
