"""The verdict at the top of the report: sentences generated from the evidence and the table, each one a
claim that ``segbench.comparison`` makes at its family-wise level (calibrated by ``segbench calibrate``).

In order: what failed and was left out; whether anything learned (against predicting background
everywhere); the best, or the confidence set for the best; each other architecture's answer against the
leader (worse / equivalent within the margin / inconclusive, with the difference it could have detected);
the cheapest of those shown equivalent; the runs still improving when the budget ended; how often the
leader leads over resamples; the caveats (one seed, one subject, too few units).
"""

from __future__ import annotations

import math

from segbench.bench.report.candidates import answer
from segbench.bench.report.deployment import DeploymentSplit, Excess
from segbench.bench.report.evidence import Evidence
from segbench.bench.report.results import format_value
from segbench.comparison import MIN_UNITS, POWER, Comparison, Standing

__all__ = ["verdict"]

# Cost columns the verdict names the cheapest equivalent architecture by: key, what, unit, digits.
COSTS = (("gflops", "FLOPs", "GFLOPs", 2), ("latency_ms", "latency", "ms", 2), ("infer_peak_mb", "inference memory", "MB", 1))


def _ci(s: Standing) -> str:
    if math.isnan(s.low):
        return f"{s.name} {s.mean:.4f}"
    return f"{s.name} {s.mean:.4f} [{s.low:.4f}–{s.high:.4f}]"


def _diff(s: Standing) -> str:
    return f"{s.name} {s.diff:+.4f} [{s.diff_low:+.4f}, {s.diff_high:+.4f}]"


def _names(names: list[str]) -> str:
    return ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1] if names else ""


def _cheapest(members: list[str], table: list[dict]) -> list[str]:
    rows = {r["arch"]: r for r in table if r["arch"] in members}
    parts = []
    for key, what, unit, digits in COSTS:
        values = [(rows[a][key], a) for a in members if a in rows and isinstance(rows[a].get(key), (int, float))
                  and not isinstance(rows[a].get(key), bool)]
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


def _units(evidence: Evidence) -> str:
    return f"{evidence.n_units} {evidence.unit}{'s' if evidence.n_units != 1 else ''}"


def _how(evidence: Evidence, c: Comparison) -> str:
    over = "units and seeds" if not evidence.one_seed else "units"
    return (f"{evidence.metric} per {evidence.unit}; simultaneous {1 - c.alpha:.0%} intervals over {_units(evidence)}, "
            f"bootstrap over {over}")


def _learning(c: Comparison) -> tuple[list[str], bool]:
    """Sentences on the floor; and whether any architecture learned."""
    if math.isnan(c.floor_mean):
        return [], True
    others = list(c.standings)
    not_learned = [s.name for s in others if not s.learned]
    if len(not_learned) == len(others):
        return [f"Nothing shown learned: no architecture is shown better than predicting background everywhere (the "
                f"floor scores {c.floor_mean:.4f}), so no best is named. Means: {'; '.join(_ci(s) for s in others)}."], False
    if not_learned:
        return [f"Not shown to have learned: {_names(not_learned)} (not shown better than predicting background "
                f"everywhere, which scores {c.floor_mean:.4f}); never named best or equivalent."], True
    return [], True


def _answers(evidence: Evidence, c: Comparison, table: list[dict], scope: str = "") -> list[str]:
    """The best (or the confidence set for it), then every other architecture's answer against the leader.
    ``scope``: " within the budget" when the comparison is over the architectures that fit one."""
    lead = c.standings[0]
    out = []
    if c.best is not None:
        others = "every other architecture within it" if scope else "every other architecture"
        out.append(f"Best{scope}: {_ci(lead)} ({_how(evidence, c)}); {others} is shown worse.")
    else:
        members = [s for s in c.standings if s.in_best_set]
        out.append(f"No single winner{scope}: the best is one of {_names([s.name for s in members])} (a {1 - c.alpha:.0%} "
                   f"confidence set: no other architecture is shown better than them; {_how(evidence, c)}). "
                   f"Highest mean: {_ci(lead)}.")
    rest = [s for s in c.standings[1:] if s.learned]
    worse = [s for s in rest if s.status == "worse"]
    equivalent = [s for s in rest if s.status == "equivalent"]
    inconclusive = [s for s in rest if s.status == "inconclusive"]
    if worse and c.best is None:
        out.append(f"Worse than {lead.name} (difference [simultaneous interval]): {'; '.join(_diff(s) for s in worse)}.")
    if equivalent:
        out.append(f"Equivalent to {lead.name} within ±{c.margin:g}: {'; '.join(_diff(s) for s in equivalent)}.")
    if inconclusive:
        detectable = max(s.detectable for s in inconclusive)
        out.append(f"Inconclusive against {lead.name}, neither shown worse nor equivalent within ±{c.margin:g}: "
                   f"{'; '.join(_diff(s) for s in inconclusive)}. With these {evidence.unit}s a difference of about "
                   f"{detectable:.3f} would be detected with {POWER:.0%} power; smaller ones may be there unseen.")
    if equivalent:
        cheap = _cheapest([lead.name] + [s.name for s in equivalent], table)
        if cheap:
            out.append(f"Cheapest of {lead.name} and those equivalent to it: {_names(cheap)}.")
    elif inconclusive:
        out.append(f"No architecture is shown equivalent to {lead.name}, so no cheaper alternative is named: the "
                   "inconclusive ones may be as good, or worse.")
    return out


def _anchor(c: Comparison, table: list[dict]) -> tuple[list[str], bool]:
    """Per anchor (a row marked ``anchor``: nnU-Net run by its own code), one sentence: whether any architecture of
    the zoo reaches it (shown better, or equivalent within the margin, by the family's simultaneous interval of
    their difference); and whether the sentence goes first (no architecture of the zoo is shown to reach it)."""
    anchors = [r["arch"] for r in table if r.get("anchor")]
    zoo = {r["arch"] for r in table if not r.get("anchor") and not r.get("candidate")}
    standing = {s.name: s for s in c.standings}
    out, first = [], False
    for anchor in [a for a in anchors if a in standing]:
        members = [s for s in c.standings if s.name in zoo]
        if not members:
            continue
        head = f"the nnU-Net anchor ({_ci(standing[anchor])})"
        if not c.inferential:
            out.append(f"Whether the zoo reaches {head} is not tested ({c.n_units} units); the zoo's best mean: "
                       f"{_ci(members[0])}.")
            continue
        judged = []
        for s in members:
            diff, low, high = c.difference(s.name, anchor)
            judged.append((s.name, answer(low, high, c.margin), f"{s.name} {diff:+.4f} [{low:+.4f}, {high:+.4f}]"))
        reaching = [(n, a, t) for n, a, t in judged if a in ("better", "equivalent")]
        if reaching:
            parts = [f"{n} is {'better' if a == 'better' else f'equivalent within ±{c.margin:g}'}, {t.split(' ', 1)[1]}"
                     for n, a, t in reaching]
            out.append(f"The zoo reaches {head}: {'; '.join(parts)} (difference to nnU-Net [simultaneous interval]).")
            continue
        first = True
        worse = [t for _, a, t in judged if a == "worse"]
        if len(worse) == len(judged):
            out.append(f"No architecture of the zoo reaches {head}: every one is shown worse; the closest, {judged[0][2]}.")
        else:
            open_ = [t for _, a, t in judged if a == "inconclusive"]
            out.append(f"No architecture of the zoo is shown to reach {head}: neither shown equivalent within "
                       f"±{c.margin:g} nor worse: {'; '.join(open_)}" + (f"; shown worse: {'; '.join(worse)}" if worse else "")
                       + ".")
    return out, first


def _caveats(evidence: Evidence, c: Comparison) -> list[str]:
    out = []
    if evidence.one_seed:
        out.append("One seed per architecture: seed-to-seed variation was not measured, so intervals and tests cover "
                   "the choice of units only, and a different seed may reorder close architectures.")
    if evidence.folds:
        out.append(f"{evidence.folds}-fold cross-validation: each case is scored by the fold model that held it out.")
    if evidence.unit == "block":
        sizes = sorted(set(evidence.block_slices))
        out.append(f"The validation split holds one volume ({evidence.volume}): the units are {evidence.n_units} "
                   f"blocks of {'-'.join(map(str, sizes))} contiguous slices (neighbouring slices are correlated), and "
                   "whatever is said here describes this one subject, not new subjects.")
    if evidence.floor_missing:
        out.append("The per-case files do not say where the reference is empty (an older segbench wrote them), so "
                   "the floor was not scored and learning is not tested.")
    return out


def _cost(e: Excess) -> str:
    return f"{e.limit.what} {format_value(e.value, e.limit.digits)} {e.limit.unit}"


def _budget(split: DeploymentSplit, table: list[dict]) -> list[str]:
    """Which architectures fit the budget, which fell outside and by how much, which could not be placed."""
    devices = sorted({str(r["device_name"]) for r in table if r.get("arch") in split.inside + [a for a, _ in split.outside]
                      and r.get("device_name")})  # fmt: skip
    where = f"on {', '.join(devices)}" if devices else "on the machine that measured them"
    measured = "medians over the runs"
    if split.budget.latency_ms is not None:
        engine = "--engine onnx" if split.budget.latency_engine == "onnx" else ""
        measured += f"; latency of a batch-1 forward pass as `segbench predict{' ' + engine if engine else ''}` runs it, {where}"
    elif split.budget.infer_peak_mb is not None:
        measured += f"; memory {where}"
    out = [f"Deployment budget: {split.budget.describe()} ({measured}). Within it: {_names(split.inside) or 'none'}."]
    if split.outside:
        parts = [f"{arch} ({'; '.join(f'{_cost(e)}, {format_value(e.over, e.limit.digits)} {e.limit.unit} over' for e in excess)})"
                 for arch, excess in split.outside]  # fmt: skip
        out.append(f"Outside the budget: {'; '.join(parts)}.")
    if split.unmeasured:
        out.append("Not measured, so not shown within the budget: "
                   f"{'; '.join(f'{arch} (no {_names(what)})' for arch, what in split.unmeasured)}.")
    if split.close:
        parts = [f"{arch} {_cost(e)} [{format_value(e.low, e.limit.digits)}–{format_value(e.high, e.limit.digits)}]"
                 for arch, e in split.close]
        out.append(f"Near the limit, its runs on both sides of it (placed by the median): {'; '.join(parts)}.")
    if not split.inside:
        costs = [(e.over / e.budget, arch, e) for arch, excess in split.outside for e in excess]
        if costs:
            _, arch, e = min(costs)
            out.append(f"Nothing fits the budget, so no best is named; the nearest is {arch} ({_cost(e)}).")
    elif len(split.inside) > 1:
        out.append(f"The comparison below is over the {len(split.inside)} architectures within the budget.")
    return out


def verdict(evidence: Evidence | None, table: list[dict], runs: list[dict],
            deployment: DeploymentSplit | None = None) -> list[str]:
    """The verdict's sentences. ``table``: one aggregated row per architecture; ``runs``: one row per run.
    ``deployment``: the architectures placed against a deployment budget; ``evidence`` is then the comparison
    over those within it, and the verdict says which fell outside."""
    if deployment is not None:
        head = _budget(deployment, table)
        if not deployment.inside:
            return head + ([f"Failed and left out: {'; '.join(evidence.failures)}."] if evidence and evidence.failures else [])
        keep = set(deployment.inside) | set(deployment.failed)
        return head + _verdict(evidence, [r for r in table if r["arch"] in keep], [r for r in runs if r["arch"] in keep],
                               " within the budget")
    return _verdict(evidence, table, runs)


def _verdict(evidence: Evidence | None, table: list[dict], runs: list[dict], scope: str = "") -> list[str]:
    if evidence is None or evidence.comparison is None:
        failed = f" Failed: {'; '.join(evidence.failures)}." if evidence is not None and evidence.failures else ""
        return ["No run left per-case scores, so nothing here can rank the architectures with an uncertainty." + failed]
    c = evidence.comparison
    out = [f"Failed and left out: {'; '.join(evidence.failures)}."] if evidence.failures else []
    anchor, anchor_first = _anchor(c, table)
    if anchor_first:  # no architecture of the zoo is shown to reach the field's baseline: said before anything else
        out = anchor + out
    if len(c.standings) == 1:
        out.append(f"One architecture{scope}: {_ci(c.standings[0])} ({evidence.metric} over {_units(evidence)}); nothing to "
                   "compare it with.")
    elif not c.inferential:
        out.append(f"No interval or test: {_units(evidence)} (fewer than {MIN_UNITS}) cannot support one, so the table's "
                   f"order is not evidence of a difference. Means: {'; '.join(_ci(s) for s in c.standings)}.")
    else:
        learning, learned = _learning(c)
        out += learning
        if learned:
            out += _answers(evidence, c, table, scope)
    if len(c.standings) == 1 and c.inferential:
        out += _learning(c)[0]
    if not anchor_first:
        out += anchor
    late = _still_improving(runs)
    if late:
        out.append(f"Not converged, still improving when the budget ended: {_names(late)}; "
                   "their rank reflects learning speed at this budget, not what they can reach.")
    if c.inferential and len(c.standings) > 1 and not math.isnan(c.standings[0].first_share):
        lead = c.standings[0]
        out.append(f"{lead.name} has the highest mean in {lead.first_share:.0%} of {c.n_resamples} bootstrap resamples.")
    out += [f"Caveat: {text}" for text in _caveats(evidence, c)]
    return out

