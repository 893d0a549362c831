"""Findings computed from the measured numbers, never written by hand.

Given the per-architecture table (:func:`segbench.bench.report.results.aggregate`), say for each architecture
where it ranks on accuracy, which cost columns it is best or worst at (of all architectures, or of its
family: CNNs or transformers), whether it sits on the accuracy/cost Pareto fronts, and whether the
accuracy gaps are larger than the spread between seeds.
"""

from __future__ import annotations

import math

from segbench.bench.report.columns import ACCURACY_KEY, COLUMNS, Column
from segbench.bench.report.results import format_value, pareto_front

__all__ = ["findings", "overall_findings", "FAMILY_NAMES"]

FAMILY_NAMES = {"cnn": "CNNs", "transformer": "transformers"}

# Cost columns worth a superlative, with the words for their best and worst ends.
_COST_WORDS: dict[str, tuple[str, str]] = {
    "params_m": ("fewest parameters", "most parameters"),
    "gflops": ("fewest FLOPs", "most FLOPs"),
    "latency_ms": ("lowest latency", "highest latency"),
    "throughput_ips": ("highest throughput", "lowest throughput"),
    "infer_peak_mb": ("lowest inference memory", "highest inference memory"),
    "train_peak_mb": ("lowest training memory", "highest training memory"),
    "train_time_s": ("shortest training time", "longest training time"),
}
_COLUMN = {c.key: c for c in COLUMNS}


def _ok(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _best(rows: list[dict], col: Column, worst: bool = False) -> dict | None:
    """The row with the best value of ``col`` (the worst with ``worst``), ignoring missing values."""
    rows = [r for r in rows if _ok(r.get(col.key))]
    if not rows:
        return None
    pick = max if (col.better == "higher") != worst else min
    return pick(rows, key=lambda r: r[col.key])


def _worst(rows: list[dict], col: Column) -> dict | None:
    return _best(rows, col, worst=True)


def _fmt(row: dict, col: Column) -> str:
    unit = f" {col.unit}" if col.unit else ""
    return f"{format_value(row[col.key], col.digits)}{unit}"


def _within_noise(a: dict, b: dict, key: str) -> bool | None:
    """True if |mean_a - mean_b| is below the combined seed standard deviation; None with one seed."""
    if min(a.get("seeds", 0), b.get("seeds", 0)) < 2 or a.get("folds") or b.get("folds"):
        return None
    spread = math.hypot(a.get(f"{key}_std") or 0.0, b.get(f"{key}_std") or 0.0)
    return abs(a[key] - b[key]) <= spread


def findings(table: list[dict], accuracy_key: str = ACCURACY_KEY) -> dict[str, list[str]]:
    """Per architecture, sentences about what this run measured (see the module docstring)."""
    acc = _COLUMN[accuracy_key] if accuracy_key in _COLUMN else Column(accuracy_key, accuracy_key, "higher", 4)
    rows = [r for r in table if _ok(r.get(accuracy_key))]
    out: dict[str, list[str]] = {r["arch"]: [] for r in table}
    for r in table:
        if not _ok(r.get(accuracy_key)):
            out[r["arch"]].append(f"No result: {r.get('error') or 'the run did not produce ' + acc.label}.")
    if not rows:
        return out
    ranked = sorted(rows, key=lambda r: r[accuracy_key], reverse=acc.better == "higher")
    best = ranked[0]
    fronts = {
        cost: {rows[i]["arch"] for i in pareto_front([r.get(cost) for r in rows], [r[accuracy_key] for r in rows])}
        for cost in ("gflops", "latency_ms")
    }
    for rank, r in enumerate(ranked, start=1):
        notes = out[r["arch"]]
        if rank == 1:
            notes.append(f"Most accurate here: {acc.label} {_fmt(r, acc)} (1st of {len(ranked)}).")
        else:
            gap = abs(r[accuracy_key] - best[accuracy_key])
            text = (
                f"{_ordinal(rank)} of {len(ranked)} on {acc.label} ({_fmt(r, acc)}, "
                f"{format_value(gap, acc.digits)} behind {best['arch']})"
            )
            noise = _within_noise(r, best, accuracy_key)
            if noise is True:
                text += "; the gap is within the spread between seeds"
            elif noise is False:
                text += "; the gap exceeds the spread between seeds"
            notes.append(text + ".")
        notes += _superlatives(r, rows)
        on = [name for cost, name in (("gflops", "FLOPs"), ("latency_ms", "latency")) if r["arch"] in fronts[cost]]
        if on:
            notes.append(f"On the accuracy-vs-{' and accuracy-vs-'.join(on)} Pareto front.")
        else:
            dominators = [
                o["arch"]
                for o in rows
                if _ok(o.get("gflops")) and _ok(r.get("gflops"))
                and o["gflops"] <= r["gflops"] and o[accuracy_key] >= r[accuracy_key] and o is not r
            ]
            if dominators:
                notes.append(f"Dominated on accuracy vs FLOPs by {', '.join(dominators)} (as accurate or more, for fewer FLOPs).")
        cheaper = _ok(r.get("gflops")) and _ok(best.get("gflops")) and 0 < r["gflops"] < best["gflops"]
        if r is not best and cheaper:
            share = r[accuracy_key] / best[accuracy_key] if best[accuracy_key] else float("nan")
            if _ok(share) and acc.better == "higher":
                notes.append(
                    f"Reaches {share:.0%} of the best {acc.label} at {r['gflops'] / best['gflops']:.0%} of its FLOPs."
                )
    return out


def _superlatives(r: dict, rows: list[dict]) -> list[str]:
    notes = []
    family = r.get("recipe")
    peers = [o for o in rows if o.get("recipe") == family]
    for key, (best_words, worst_words) in _COST_WORDS.items():
        col = _COLUMN[key]
        if not _ok(r.get(key)) or len([o for o in rows if _ok(o.get(key))]) < 2:
            continue
        if _best(rows, col) is r:
            notes.append(f"{_sentence(best_words)} of all {len(rows)} architectures here ({_fmt(r, col)}).")
        elif len(peers) >= 2 and len(peers) < len(rows) and _best(peers, col) is r:
            group = FAMILY_NAMES.get(family, family)
            notes.append(f"{_sentence(best_words)} of the {group} here ({_fmt(r, col)}).")
        elif _worst(rows, col) is r:
            notes.append(f"{_sentence(worst_words)} of all {len(rows)} architectures here ({_fmt(r, col)}).")
    return notes


def overall_findings(table: list[dict], accuracy_key: str = ACCURACY_KEY) -> list[str]:
    """A few sentences about the whole comparison: best accuracy, the Pareto fronts, seeds."""
    acc = _COLUMN.get(accuracy_key, Column(accuracy_key, accuracy_key, "higher", 4))
    rows = [r for r in table if _ok(r.get(accuracy_key))]
    failed = [r["arch"] for r in table if not _ok(r.get(accuracy_key))]
    lines = []
    if rows:
        best = _best(rows, acc)
        lines.append(f"Highest {acc.label}: {best['arch']} ({_fmt(best, acc)}); whether that beats the others beyond chance is the "
                     "verdict's question.")
        for cost, name in (("gflops", "FLOPs"), ("latency_ms", "latency")):
            front = pareto_front([r.get(cost) for r in rows], [r[accuracy_key] for r in rows])
            if front:
                lines.append(f"Pareto front, {acc.label} vs {name}: " + " -> ".join(rows[i]["arch"] for i in front) + ".")
        seeds = sorted({r.get("seeds", 0) for r in rows})
        folds = sorted({r.get("folds", 0) for r in rows})
        if folds != [0]:
            lines.append(f"Cross-validation folds: {', '.join(map(str, folds))}; seeds per architecture: "
                         f"{', '.join(map(str, seeds))}; run figures are the mean over folds and seeds.")
        elif seeds == [1]:
            lines.append("One seed per architecture: differences between architectures cannot be told apart from seed noise.")
        else:
            lines.append(f"Seeds per architecture: {', '.join(map(str, seeds))}; values are mean ± sample std.")
    if failed:
        lines.append(f"Failed: {', '.join(failed)} (see their rows).")
    return lines
