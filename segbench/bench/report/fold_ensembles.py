"""The review's fold ensembles on the test split (``segbench run --folds K --ensembles`` on data with a test split).

With cross-validation an architecture ends with K models, each trained without one fold. nnU-Net ships their
ensemble; the question a user then asks is whether it beats **one** of those models on new cases. The test
split is the same in every fold and no fold model saw it, so both are scored on the same test cases:

- "<arch>, one fold model": every finished fold run (fold x seed) of the architecture, its best checkpoint on
  the test split (``per_case_test.csv``); the runs are replicates of "a fold model", crossed with the cases
  (every one scores every test case), as seeds are in the validation family;
- "<arch> K-fold ensemble": per seed, the softmax mean of its K fold models on the same cases.

All of them form one comparison (``segbench.comparison``: the two-way bootstrap over cases and replicates,
simultaneous intervals), separate from the validation family (other units); each ensemble is judged against
its own architecture's single model by ``candidates.answer``. Priced: batch-1 latency of the ensemble and of
one of its fold models, timed in the same interleaved measurement, and the Dice gained per added millisecond.
"""

from __future__ import annotations

import math
from pathlib import Path

from segbench.bench.protocol.record import CandidateRecord, ReviewRun
from segbench.bench.report.candidates import answer, dice_per_added_ms
from segbench.bench.report.evidence import RunKey, RunScores, gather, read_run_scores

__all__ = ["fold_ensemble_section", "single_name", "replicates"]

TEST = "test"


def single_name(label: str) -> str:
    return f"{label}, one fold model"


def _fold_runs(plan: list[ReviewRun], label: str, ok: bool = True) -> list[ReviewRun]:
    """The architecture's fold runs (fold x seed) that finished (``ok``), or those that did not."""
    return [r for r in plan if r.label == label and r.fold is not None and (r.row.get("status") == "ok") == ok]


def replicates(plan: list[ReviewRun], candidates: list[CandidateRecord]) -> str:
    """Per architecture, the fold runs the comparison uses as replicates of "one fold model" (the finished
    ones), and how many did not finish."""
    parts = []
    for c in candidates:
        label = c.members[0]
        failed = len(_fold_runs(plan, label, ok=False))
        parts.append(f"{label}: {len(_fold_runs(plan, label))} runs"
                     + (f" ({failed} unfinished, left out)" if failed else ""))
    return ", ".join(parts)


def _scores(plan: list[ReviewRun], out: Path, candidates: list[CandidateRecord]) -> dict[str, dict[RunKey, RunScores | None]]:
    per_arch: dict[str, dict[RunKey, RunScores | None]] = {}
    for c in candidates:
        label = c.members[0]
        fold_runs = _fold_runs(plan, label)
        per_arch[single_name(label)] = {RunKey(None, i): read_run_scores(r.run_dir, TEST) for i, r in enumerate(fold_runs)}
        per_arch[c.name] = {RunKey(None, CandidateRecord.parse_key(key)[1]): read_run_scores(out / folder, TEST)
                            for key, folder in c.folders.items()}
    return per_arch


def _figure(value: float | None, digits: int = 4, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fold_ensemble_section(plan: list[ReviewRun], out: Path, candidates: list[CandidateRecord], margin: float) -> dict:
    """The report's section (``intro``, ``columns``, ``rows`` of strings, ``notes``); empty without fold ensembles."""
    folds = [c for c in candidates if c.kind == "folds" and c.split == TEST and c.folders]
    if not folds:
        return {}
    evidence = gather(_scores(plan, out, folds), margin=margin)
    c = evidence.comparison if evidence is not None else None
    if c is None:
        return {}
    names = {s.name for s in c.standings}
    rows, notes = [], []
    for record in folds:
        single = single_name(record.members[0])
        for name in (single, record.name):
            if name not in names:
                notes.append(f"{name}: no complete test scores; left out")
                continue
            s = c.standing(name)
            row = [name, f"{_figure(s.mean)} [{_figure(s.low)}–{_figure(s.high)}]", "", "", "", "", ""]
            cost = record.reference_cost if name == single else record.cost
            row[4] = _figure(cost.get("latency_ms"), 2)
            row[5] = str(cost.get("forward_passes", ""))
            if name == record.name and single in names:
                diff, low, high = c.difference(name, single)
                row[2] = f"{diff:+.4f} [{_figure(low, 4, True)}, {_figure(high, 4, True)}]"
                row[3] = answer(low, high, c.margin) if c.inferential else "not tested"
                per_ms = dice_per_added_ms(diff, record.cost.get("latency_ms"), record.reference_cost.get("latency_ms"))
                row[6] = "" if per_ms is None else f"{per_ms:+.5f}"
            rows.append(row)
    intro = (f"{evidence.metric} per case on the test split ({evidence.n_cases} cases, held out by every fold model), "
             f"simultaneous {1 - c.alpha:.0%} intervals in one family of {len(c.standings)} predictors, separate from "
             f"the validation comparison; each K-fold ensemble (softmax mean of its fold models, per seed) against one "
             f"of its own fold models (every finished fold x seed run a replicate: {replicates(plan, folds)}); margin ±{c.margin:g}.")
    if not c.inferential:
        notes.append(f"No interval or test: {evidence.n_units} test cases cannot support one; the answers are not evidence.")
    notes.append("Latency: batch 1, the ensemble and one of its fold models timed in one interleaved measurement "
                 "(the review's harness, the runs' precision); Dice per ms = the difference / the latency added.")
    return {"intro": intro, "rows": rows, "notes": notes,
            "columns": ["predictor", "Test Dice [95%]", "vs one fold model [simult. 95%]", "answer", "latency (ms)",
                        "passes", "Dice per ms"]}
