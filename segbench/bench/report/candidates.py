"""Ensembles and flip TTA against the best single model: the review's statistics on the same units, and
what the gain costs.

Every predictor (each single run, each candidate: a run with TTA, an ensemble, an ensemble with TTA) is
scored per case by the one evaluation loop; ``evidence.gather`` turns the rows into one score per unit
(the same units and empty-structure rule as the review) and ``segbench.comparison.compare`` compares them
all in one family. A candidate's answer against the best single model (the single with the highest
mean) is read off that family's simultaneous interval of their difference (``Comparison.difference``):

- **better**: the interval lies above 0; **worse**: below 0;
- **equivalent**: inside (-margin, margin); **inconclusive**: neither.

So every sentence holds with the family-wise level of the review, whatever the number of candidates.
The price: the candidate's batch-1 latency from the one timing harness (measured, not multiplied), and
**Dice per added millisecond**: (candidate mean - best single mean) / (candidate latency - best single
latency), left empty when the candidate is not slower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from segbench.bench.report.evidence import Evidence, RunKey, RunScores, gather

__all__ = ["CandidateRow", "Judged", "answer", "dice_per_added_ms", "scores_of_rows", "judge", "format_judged"]


def scores_of_rows(per_case: list[dict], per_slice: list[dict]) -> RunScores:
    """The evaluation loop's in-memory rows (``SegmentationMetrics.per_case_rows``/``per_slice_rows``) as the
    review reads them from a run's files."""
    def keep(row: dict, keys: tuple[str, ...]) -> dict:
        return {**{k: row[k] for k in keys}, "dice": float(row["dice"]), "ref_empty": row.get("ref_empty")}

    return RunScores([keep(r, ("case", "class")) for r in per_case], [keep(r, ("case", "slice", "class")) for r in per_slice])


@dataclass(frozen=True)
class CandidateRow:
    """One predictor's row: its accuracy in the family, its answer against the best single, its price."""

    name: str
    single: bool  # one run, no TTA
    mean: float
    low: float  # its own interval (the review's expanded percentile)
    high: float
    diff: float  # mean - the best single's mean (0 for the best single)
    diff_low: float  # simultaneous interval of that difference (NaN for the best single, or no inference)
    diff_high: float
    answer: str  # "best single", "single", "better", "worse", "equivalent", "inconclusive"
    latency_ms: float | None
    latency_q1_ms: float | None
    latency_q3_ms: float | None
    forward_passes: int | None
    dice_per_added_ms: float | None  # (diff) / (latency - best single's latency); None when not slower


@dataclass(frozen=True)
class Judged:
    evidence: Evidence
    best_single: str
    rows: tuple[CandidateRow, ...]  # singles first (by mean), then candidates in the order given


def answer(diff_low: float, diff_high: float, margin: float) -> str:
    """A candidate's answer against the best single from the simultaneous interval of their difference."""
    if math.isnan(diff_low):
        return "inconclusive"
    if diff_low > 0:
        return "better"
    if diff_high < 0:
        return "worse"
    if -margin < diff_low and diff_high < margin:
        return "equivalent"
    return "inconclusive"


def dice_per_added_ms(diff: float, latency, base) -> float | None:
    """Dice gained per millisecond of latency added over the reference (``base``); None unless both latencies
    were measured and the candidate is slower."""
    if isinstance(latency, (int, float)) and isinstance(base, (int, float)) and latency > base:
        return diff / (latency - base)
    return None


def judge(singles: dict[str, RunScores], candidates: dict[str, RunScores], costs: dict[str, dict], *,
          margin: float) -> Judged | None:
    """Compare ``singles`` and ``candidates`` (name -> scores on the same units) in one family; ``costs``:
    name -> ``price_candidates``' figures (may be empty). None when no predictor left per-case scores."""
    per_arch = {name: {RunKey(None, 0): scores} for name, scores in {**singles, **candidates}.items()}
    evidence = gather(per_arch, margin=margin)
    if evidence is None or evidence.comparison is None:
        return None
    c = evidence.comparison
    compared = {s.name for s in c.standings}
    best = max((s for s in c.standings if s.name in singles), key=lambda s: s.mean).name
    base = costs.get(best, {}).get("latency_ms")
    rows = []
    for name in [s.name for s in c.standings if s.name in singles] + [n for n in candidates if n in compared]:
        s = c.standing(name)
        diff, low, high = (0.0, math.nan, math.nan) if name == best else c.difference(name, best)
        cost = costs.get(name, {})
        latency = cost.get("latency_ms")
        said = "best single" if name == best else "single" if name in singles else answer(low, high, c.margin)
        rows.append(CandidateRow(
            name=name, single=name in singles, mean=s.mean, low=s.low, high=s.high, diff=diff, diff_low=low,
            diff_high=high, answer=said, latency_ms=latency, latency_q1_ms=cost.get("latency_q1_ms"),
            latency_q3_ms=cost.get("latency_q3_ms"), forward_passes=cost.get("forward_passes"),
            dice_per_added_ms=dice_per_added_ms(diff, latency, base) if name != best else None))
    return Judged(evidence, best, tuple(rows))


def _number(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_judged(judged: Judged) -> list[str]:
    """A plain-text table and the sentences it supports."""
    e, c = judged.evidence, judged.evidence.comparison
    lines = [f"{e.metric} per {e.unit} over {e.n_units} {e.unit}s; simultaneous {1 - c.alpha:.0%} intervals "
             f"(one family: {len(c.standings)} predictors), margin ±{c.margin:g}; batch-1 latency, one interleaved timing",
             f"  {'predictor':<40} {'mean [interval]':>24} {'vs best single [simult.]':>34} {'answer':>12} "
             f"{'latency ms':>11} {'passes':>6} {'Dice/ms':>8}"]
    for r in judged.rows:
        own = f"{r.mean:.4f} [{_number(r.low, 4)}–{_number(r.high, 4)}]"
        versus = "" if r.single and r.answer != "single" else \
            f"{r.diff:+.4f} [{_number(r.diff_low, 4, True)}, {_number(r.diff_high, 4, True)}]"
        lines.append(f"  {r.name:<40} {own:>24} {versus:>34} {r.answer:>12} {_number(r.latency_ms, 2):>11} "
                     f"{r.forward_passes if r.forward_passes is not None else '-':>6} {_number(r.dice_per_added_ms, 4, True):>8}")
    if not c.inferential:
        lines.append(f"  No interval or test: {e.n_units} {e.unit}s cannot support one; the answers are not evidence.")
    for r in judged.rows:
        if r.single:
            continue
        what = {"better": f"better than {judged.best_single}", "worse": f"worse than {judged.best_single}",
                "equivalent": f"equivalent to {judged.best_single} within ±{c.margin:g}",
                "inconclusive": f"neither shown better, worse nor equivalent to {judged.best_single}"}[r.answer]
        price = (f"; it costs {r.latency_ms - judged.rows[0].latency_ms:+.2f} ms per image"
                 if r.latency_ms is not None and judged.rows[0].latency_ms is not None else "")
        lines.append(f"  {r.name}: {what}{price}.")
    return lines
