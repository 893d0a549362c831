"""The verdict at the top of the report: sentences generated from the evidence and the table, each one
only where the numbers support it.

In order: which architectures the paired tests cannot separate from the best (the top group, with their
intervals), the cheapest of them by FLOPs, latency and memory, the runs whose best validation was their
last (still improving when the budget ended), how stable the ranking is under resampling, and the
caveats (too few units for a test to separate anything; units that are slices of one subject).
"""

from __future__ import annotations

import math

from segbench.bench.report.evidence import ALPHA, Evidence
from segbench.bench.report.results import format_value

__all__ = ["verdict"]

# Cost columns the verdict names the cheapest top-group member by: key, what, unit, digits.
COSTS = (("gflops", "FLOPs", "GFLOPs", 2), ("latency_ms", "latency", "ms", 2), ("infer_peak_mb", "inference memory", "MB", 1))


def _ci(evidence: Evidence, arch: str) -> str:
    interval = evidence.intervals[arch]
    if math.isnan(interval.low):
        return f"{arch} {interval.mean:.4f}"
    return f"{arch} {interval.mean:.4f} [{interval.low:.4f}–{interval.high:.4f}]"


def _names(names: list[str]) -> str:
    return ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1] if names else ""


def _cheapest(members: list[str], table: list[dict]) -> list[str]:
    rows = {r["arch"]: r for r in table if r["arch"] in members}
    parts = []
    for key, what, unit, digits in COSTS:
        values = [(rows[a][key], a) for a in members if a in rows and isinstance(rows[a].get(key), (int, float))]
        if len(values) >= 2:
            value, arch = min(values)
            parts.append(f"{arch} in {what} ({format_value(value, digits)} {unit})")
    return parts


def _still_improving(runs: list[dict]) -> list[str]:
    """Rows (architecture labels) with a run that had not converged (``converged`` false; runs that do not
    record it: best validation at the last iteration)."""
    late = []
    for row in runs:
        if row.get("status") != "ok" or row["arch"] in late:
            continue
        if row.get("converged") is False or (
                "converged" not in row and row.get("best_iteration") is not None
                and row.get("best_iteration") == row.get("iterations")):
            late.append(row["arch"])
    return late


def verdict(evidence: Evidence | None, table: list[dict], runs: list[dict]) -> list[str]:
    """The verdict's sentences. ``table``: one aggregated row per architecture; ``runs``: one row per run."""
    if evidence is None:
        return ["No run left per-case scores, so nothing here can rank the architectures with an uncertainty."]
    out = []
    unit = evidence.unit
    n = max(evidence.units.values())
    top = evidence.top
    if top is None:
        arch = next(iter(evidence.intervals))
        out.append(f"One architecture: {_ci(evidence, arch)} ({evidence.metric} over {n} {unit}s, 95% bootstrap "
                   "interval); nothing to compare it with.")
    else:
        members = list(top.members)
        tested = [r for r in top.results if r.tested]
        untested = [r.name for r in top.results if r.name != top.best and not r.tested]
        how = (f"paired Wilcoxon signed-rank tests on the same {unit}s against the best, Holm-corrected, "
               f"alpha {ALPHA}")
        if not tested:
            out.append(f"No architecture can be told apart from another: with {n} {unit}(s) no paired test can "
                       f"reach significance at alpha {ALPHA}, so the table's order is not evidence of a difference. "
                       f"Means: {'; '.join(_ci(evidence, a) for a in members)}.")
        elif len(members) == 1:
            out.append(f"Best: {_ci(evidence, top.best)} ({evidence.metric}, 95% interval over {unit}s and runs); "
                       f"every other architecture is significantly worse on the same {n} {unit}s ({how}).")
        else:
            out.append(f"No single winner: {len(members)} architectures cannot be separated from the best, "
                       f"{top.best} ({how}). Top group: {'; '.join(_ci(evidence, a) for a in members)}.")
            cheap = _cheapest(members, table)
            if cheap:
                out.append(f"Cheapest in the top group: {_names(cheap)}.")
            if untested and tested:
                out.append(f"{_names(untested)}: too few {unit}s with a difference to test, so counted in the top "
                           "group untested.")
    late = _still_improving(runs)
    if late:
        out.append(f"Not converged, still improving when the budget ended: {_names(late)}; "
                   "their rank reflects learning speed at this budget, not what they can reach.")
    ranks = evidence.ranks
    if ranks is not None and not math.isnan(ranks.tau_median):
        first = max(ranks.rank_counts, key=lambda a: ranks.rank_counts[a].get(1.0, 0))
        share = ranks.rank_counts[first].get(1.0, 0) / ranks.n_resamples
        out.append(f"Ranking stability over {ranks.n_resamples} resamples of the {ranks.n_cases} common {unit}s: "
                   f"Kendall's tau with the observed ranking, median {ranks.tau_median:.2f} "
                   f"[IQR {ranks.tau_q1:.2f}–{ranks.tau_q3:.2f}]; {first} ranks first in {share:.0%} of them.")
    out += [f"Caveat: {note}." for note in evidence.notes]
    return out
