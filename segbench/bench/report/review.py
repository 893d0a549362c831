"""Assemble the review from a sweep's run folders: ``OUT/report/`` with ``index.html``, ``report.md``,
``results.csv``, ``results.json`` and the PNG figures.

A pipeline of typed steps over a ``ReviewInput`` (``segbench.bench.protocol.record``: each planned run's
row, the settings as they ran, the architectures' facts; ``segbench.bench.protocol.review_input`` gathers
it). Only the runs of the current plan are read, so a folder that also holds runs of other settings never
leaks them into the report. Imports no torch (``tests/test_import_rules.py`` checks it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbench.bench.protocol.record import (
    PREVIEW_FILE, CandidateRecord, ReviewInput, ReviewRun, ReviewSetup, WorkerResult, class_key, read_candidates,
)  # fmt: skip
from segbench.bench.report import plots
from segbench.bench.report.candidates import answer, dice_per_added_ms
from segbench.bench.report.columns import ACCURACY_KEY, COLUMNS
from segbench.bench.report.deployment import DEPLOYMENT_FILE, DeploymentBudget, split_by_budget
from segbench.bench.report.devices import arch_devices, device_runs, mixed_devices_warning
from segbench.bench.report.evidence import (
    MARGIN, Evidence, RunKey, RunScores, evidence_figures, gather, read_run_scores, write_evidence,
)  # fmt: skip
from segbench.bench.report.findings import findings, overall_findings
from segbench.bench.report.fold_ensembles import fold_ensemble_section
from segbench.bench.report.render import ReportInputs, table_columns, write_html, write_markdown
from segbench.bench.report.results import aggregate, write_results
from segbench.bench.report.verdict import verdict
from segbench.jsonio import write_json
from segbench.metric_defs import HEADLINE, metric
from segbench.run_files import LOG_FILE

__all__ = ["write_review", "ACCURACY_KEY"]


def _verdict(evidence: Evidence | None, table: list[dict], rows: list[dict], per_arch: dict, margin: float,
             deployment: DeploymentBudget, report_dir: Path) -> list[str]:
    """The verdict; under a deployment budget, over a comparison of the architectures within it (the failed
    ones kept, so the verdict still names them), with ``deployment_budget.json`` saying which fit."""
    if not deployment:
        (report_dir / DEPLOYMENT_FILE).unlink(missing_ok=True)
        return verdict(evidence, table, rows)
    split = split_by_budget(table, deployment)
    within = gather({a: runs for a, runs in per_arch.items() if a in split.inside or a in split.failed}, margin=margin)
    c = within.comparison if within is not None and split.inside else None
    write_json({
        "budget": {limit.key: value for limit, value in deployment.limits()}, "within": split.inside,
        "outside": {arch: {e.limit.key: {"value": e.value, "over": e.over} for e in excess} for arch, excess in split.outside},
        "not_measured": dict(split.unmeasured),
        "comparison": None if c is None else {"leader": c.leader, "best": c.best, "best_set": list(c.best_set),
                                              "margin": c.margin, "inferential": c.inferential},
    }, report_dir / DEPLOYMENT_FILE)
    return verdict(within, table, rows, split)


def _number(value: float) -> float | None:
    return None if value != value else value


def _current_candidates(out: Path, plan: list[ReviewRun]) -> list[CandidateRecord]:
    """The candidates of ``OUT/candidates/`` built from this plan's runs (an older plan's are ignored)."""
    planned = {run.run_dir.name for run in plan}
    return [c for c in read_candidates(out) if c.folders and not c.error
            and all(set(names) <= planned for names in c.member_runs.values())]


def _candidate_scores(out: Path, candidates: list[CandidateRecord]) -> dict[str, dict[RunKey, RunScores | None]]:
    """Each candidate's per-case scores, as a run's: the review's evidence compares them with the architectures."""
    return {c.name: {RunKey(*CandidateRecord.parse_key(key)): read_run_scores(out / folder)
                     for key, folder in c.folders.items()} for c in candidates}


# A candidate's figures of its evaluation shown in the table beside the evidence's: the mean over its (fold, seed)s.
_CANDIDATE_METRICS = ("mIoU", "hd95_fg", "nsd_fg", "hd95_worst_case")


def _candidate_metrics(c: CandidateRecord) -> dict:
    out = {}
    for key in _CANDIDATE_METRICS:
        values = [m[key] for m in c.metrics.values() if isinstance(m.get(key), (int, float)) and m[key] == m[key]]
        if values:
            out[f"{c.split}_{key}"] = sum(values) / len(values)
    units = {m.get("distance_unit") for m in c.metrics.values()} - {None}
    if len(units) == 1:
        out[f"{c.split}_distance_unit"] = units.pop()
    return out


def _candidate_rows(candidates: list[CandidateRecord], figures: dict[str, dict]) -> list[dict]:
    """Table rows of the candidates: what they combine, their cost (``price_candidates``), their evaluation's
    figures (HD95, NSD, mIoU) and ``figures`` (the evidence's, and their answers against the best single
    architecture)."""
    rows = []
    for c in candidates:
        flips = f", flips {'+'.join(c.flips)}" if c.flips else ""
        keys = [CandidateRecord.parse_key(k) for k in c.folders]
        rows.append({"arch": c.name, "backbone": f"{c.kind}: {' + '.join(c.members)}{flips}", "runs": len(keys),
                     "seeds": len({s for _, s in keys}), "folds": len({f for f, _ in keys} - {None}), "failed_runs": 0,
                     "error": "", "candidate": c.kind, "forward_passes": c.cost.get("forward_passes"),
                     **{k: c.cost.get(k) for k in ("latency_ms", "latency_q1_ms", "latency_q3_ms", "latency_noisy",
                                                    "gflops", "infer_peak_mb")},
                     **_candidate_metrics(c), **figures.get(c.name, {})})
    return rows


def _candidate_answers(evidence: Evidence | None, candidates: list[CandidateRecord]) -> dict[str, dict]:
    """Each candidate against the best single architecture (its ``reference``): the difference and its
    simultaneous interval from the verdict's own family, the answer, and Dice per added millisecond."""
    comparison = evidence.comparison if evidence is not None else None
    if comparison is None:
        return {}
    names = {s.name for s in comparison.standings}
    out = {}
    for c in candidates:
        if c.name not in names or c.reference not in names:
            continue
        diff, low, high = comparison.difference(c.name, c.reference)
        row = out[c.name] = dict(vs_best_single=diff, vs_best_single_low=_number(low), vs_best_single_high=_number(high))
        if comparison.inferential:
            row["best_single_answer"] = answer(low, high, comparison.margin)
        per_ms = dice_per_added_ms(diff, c.cost.get("latency_ms"), c.reference_cost.get("latency_ms"))
        if per_ms is not None:
            row["dice_per_ms"] = per_ms
    return out


def _first_ok(plan: list[ReviewRun]) -> dict[str, ReviewRun]:
    """Per architecture, its first successful run (the one whose curves and predictions are drawn)."""
    chosen: dict[str, ReviewRun] = {}
    for run in plan:
        if run.row["status"] == "ok" and run.label not in chosen:
            chosen[run.label] = run
    return chosen


def _curves(runs: dict[str, ReviewRun], rows: list[dict], metric: str) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Per architecture, the loss and validation curves of ``runs`` from their logs, with the convergence
    figures of their results rows (``rows``)."""
    row_of = {row["run_dir"]: row for row in rows}
    curves = {}
    for arch, run in runs.items():
        loss, val = [], []
        path = run.run_dir / LOG_FILE
        for line in path.read_text().splitlines() if path.is_file() else []:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if record.get("event") == "train" and isinstance(record.get("loss"), (int, float)):
                loss.append((record["iteration"], record["loss"]))
            elif record.get("event") == "val" and isinstance(record.get(metric), (int, float)):
                val.append((record["iteration"], record[metric]))
        row = row_of[str(run.run_dir)]
        curves[arch] = {"loss": loss, "val": val, "gain": row.get("last_improvement_iteration"),
                        "converged": row.get("converged")}
    return curves


def _prediction_grid(runs: dict[str, ReviewRun], class_names: list[str], path: Path) -> tuple[Path | None, list[str]]:
    notes, predictions = [], {}
    images = truths = indices = None
    for arch, run in runs.items():
        file = run.run_dir / PREVIEW_FILE
        if not file.is_file():
            notes.append(f"{arch}: no preview predictions")
            continue
        with np.load(file) as npz:
            if indices is None:
                indices, images, truths = npz["indices"], list(npz["images"]), list(npz["truths"])
            elif not np.array_equal(indices, npz["indices"]):
                notes.append(f"{arch}: its preview shows other images (different data?); left out of the grid")
                continue
            predictions[arch] = list(npz["predictions"])
    if not predictions:
        return None, notes
    return plots.prediction_grid(images, truths, predictions, class_names, path), notes


def _measurement_notes(rows: list[dict], setup: ReviewSetup, seeds: int) -> list[str]:
    methods = sorted({r["memory_method"] for r in rows if r.get("memory_method")})
    pretrained = sorted({r["pretrained"] for r in rows})
    precisions = ", ".join(sorted({str(r["precision"]) for r in rows if r.get("precision")})) or "fp32"
    return [
        "Accuracy: each architecture's best checkpoint, chosen on the validation split by mean foreground Dice "
        "per case. Val Dice: the mean over validation units (a case; a lone volume's blocks of contiguous slices) "
        "of each unit's mean foreground Dice over the classes present in reference or prediction, a unit with "
        "nothing in either scoring 1, a missed or invented structure 0; the verdict ranks and tests this one "
        f"quantity. mIoU: {metric('mIoU').help}. HD95: {metric('hd95_fg').help}; in mm where the data has a voxel "
        f"spacing, in pixels otherwise. NSD: {metric('nsd_fg').help}.",
        f"Seeds: {seeds} per architecture; seed k sets weight initialisation, batch order and dropout. The "
        "data split is the same for every run.",
        f"Backbone weights: {', '.join(pretrained)}. The papers start from ImageNet weights; from-scratch "
        "numbers favour architectures that train fast without them.",
        "FLOPs: torch.utils.flop_counter.FlopCounterMode, one eval-mode forward pass at batch 1 and "
        f"{setup.measured_size[0]}x{setup.measured_size[1]}; matrix multiplications and convolutions only, "
        "2 FLOPs per multiply-add (twice the 'MACs' some papers call FLOPs).",
        f"Latency: batch-1 forward passes, {setup.timing_rounds} timed rounds after a warm-up that waits for "
        f"consecutive timings to agree within {setup.stable_within:.0%} (at most {setup.timing_max_warmup} rounds); "
        f"the median [interquartile range]; a figure whose range exceeds {setup.noisy_above:.0%} of its median is measured "
        "again, then marked noisy. Eval mode, torch.inference_mode, at the precision and memory format the run "
        f"trained in ({precisions}), on the untrained model in the run's own process. Throughput: the Speed "
        "section's inference time at the training batch, the same harness (one measurement, shown in both "
        "places); empty with --no-speed.",
        "Inference memory: " + ("; ".join(methods) or "not measured") + ", for one batch-1 forward pass "
        "(weights already resident). Training memory: " + ("; ".join(sorted({r["train_memory_method"] for r in rows
        if r.get("train_memory_method")})) or "not measured") + ", around the whole training call "
        "(model, optimiser state, activations, data); for a run resumed after an "
        "interruption, the peak of its last session.",
        "Training time: seconds in training steps (data loading included, validation and checkpoint writes "
        "excluded), summed over resumptions; images/s = images seen / that time.",
        "Every number in this report is read from the run folders; the findings are generated from them.",
    ]


@dataclass(frozen=True)
class Runs:
    """What the sweep's run folders hold, read once: one results row per run (the Speed section's throughput
    in it), each architecture's first successful run, and the facts of the data and machine."""

    plan: list[ReviewRun]
    rows: list[dict]  # each run's row (``ReviewRun.row``), in plan order
    ok: dict[str, ReviewRun]  # per architecture, the run whose curves and predictions are drawn
    first: WorkerResult  # data and machine facts: a successful run's (any run's if none succeeded)
    out: Path
    candidates: list[CandidateRecord]  # ensembles and TTA built from these runs (segbench run --ensembles)
    fold_ensembles: list[CandidateRecord]  # each architecture's fold models as one, on the test split
    anchors: list[ReviewRun]  # the field's baseline (segbench run --anchor): one per (fold, seed), after the zoo

    @property
    def anchor_rows(self) -> list[dict]:
        return [run.row for run in self.anchors]


@dataclass(frozen=True)
class Classes:
    names: list[str]
    foreground: list[str]
    dice_keys: list[str]  # per foreground class, the validation Dice's row key
    iou_keys: list[str]


def _read_runs(review: ReviewInput) -> Runs:
    plan, out = review.runs, review.out
    ok = _first_ok(plan)
    source = next(iter(ok.values()), plan[0] if plan else None)
    first = (WorkerResult.read(source.run_dir) if source else None) or WorkerResult(hash="")
    candidates = _current_candidates(out, plan)
    return Runs(plan, [run.row for run in plan], ok, first, out, [c for c in candidates if c.split == "val"],
                [c for c in candidates if c.split == "test"], list(review.anchors))


def _classes(runs: Runs, background: int) -> Classes:
    names = list(runs.first.data.get("class_names") or [])
    foreground = [n for i, n in enumerate(names) if i != background]
    return Classes(names, foreground, [class_key("val", "dice", n) for n in foreground],
                   [class_key("val", "iou", n) for n in names])


def _evidence(runs: Runs, margin: float) -> tuple[Evidence | None, dict[str, dict[RunKey, RunScores | None]]]:
    """The statistics' input (every run's per-unit scores, by architecture and (fold, seed)) and what they show."""
    per_arch: dict[str, dict[RunKey, RunScores | None]] = {}
    for run in [*runs.plan, *runs.anchors]:
        scores = read_run_scores(run.run_dir) if run.row["status"] == "ok" else None
        per_arch.setdefault(run.label, {})[RunKey(run.fold, run.seed)] = scores
    per_arch.update(_candidate_scores(runs.out, runs.candidates))
    return gather(per_arch, margin=margin), per_arch


def _table(runs: Runs, classes: Classes, evidence: Evidence | None) -> list[dict]:
    """One row per architecture, built once: the runs' figures over runs, the evidence's, and (where the runs
    came from several device models) each architecture's devices."""
    keys = [k for c in COLUMNS for k in c.keys] + classes.dice_keys + classes.iou_keys
    extra = evidence_figures(evidence)
    if mixed_devices_warning(runs.rows):
        for arch, devices in arch_devices(runs.rows).items():
            extra.setdefault(arch, {})["device_name"] = devices
    candidates = {name: {**extra.get(name, {}), **answers}
                  for name, answers in _candidate_answers(evidence, runs.candidates).items()}
    anchors = [{**row, "anchor": True} for row in aggregate(runs.anchor_rows, keys, extra=extra)]
    return aggregate(runs.rows, keys, extra=extra) + anchors + _candidate_rows(runs.candidates, {**extra, **candidates})


def _figures(runs: Runs, classes: Classes, table: list[dict], evidence: Evidence | None, deployment: DeploymentBudget,
             report_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """The report's figures by title (the accuracy-vs-cost ones with the deployment budget's limit drawn), and
    notes on what could not be drawn."""
    figures = {
        "Accuracy vs FLOPs": plots.pareto_scatter(table, "gflops", ACCURACY_KEY, report_dir / "accuracy_vs_flops.png",
                                                  deployment.gflops),
        "Accuracy vs latency" + (" (ONNX Runtime)" if deployment.latency_engine == "onnx" else ""): plots.pareto_scatter(
            table, deployment.latency_key, ACCURACY_KEY, report_dir / "accuracy_vs_latency.png", deployment.latency_ms),
    }
    curves = _curves(runs.ok, runs.rows, HEADLINE)
    if curves:
        title = ("Training curves" + (" (first seed)" if len({r.seed for r in runs.plan}) > 1 else "")
                 + ": ring, last real gain; end square, converged; end triangle, cut by the budget while improving")
        figures[title] = plots.training_curves(curves, f"Val {metric(HEADLINE).label} (fg, per case)",
                                               report_dir / "training_curves.png")
    if classes.dice_keys and table:
        figures["Per-class Dice (val)"] = plots.class_heatmap(table, classes.dice_keys, classes.foreground,
                                                              report_dir / "class_dice.png")
    figures.update(_uncertainty_figures(evidence, report_dir))
    grid, notes = _prediction_grid(runs.ok, classes.names, report_dir / "predictions.png")
    if grid is not None:
        figures["Predictions on the same validation images (best checkpoint)"] = grid
    return figures, notes


def _uncertainty_figures(evidence: Evidence | None, report_dir: Path) -> dict[str, Path]:
    comparison = evidence.comparison if evidence is not None else None
    if comparison is None or not comparison.inferential or len(comparison.standings) < 2:
        return {}
    return {
        "Accuracy with its uncertainty": plots.intervals(
            {s.name: (s.mean, s.low, s.high) for s in comparison.standings}, set(comparison.best_set),
            f"{evidence.metric} per {evidence.unit} (95% interval)", report_dir / "accuracy_intervals.png"),
        "Ranking robustness (bootstrap)": plots.rank_distribution(
            comparison.rank_counts, {s.name: float(i) for i, s in enumerate(comparison.standings, 1)},
            report_dir / "rank_distribution.png"),
    }


def _machine(runs: Runs) -> dict:
    """The machine section: the first run's, with every device model and host where runs came from several."""
    machine = dict(runs.first.machine)
    if mixed_devices_warning(runs.rows):
        machine["device_name"] = "; ".join(device_runs(runs.rows))
    hosts = sorted({str(r["host"]) for r in runs.rows if r.get("status") == "ok" and r.get("host")})
    if len(hosts) > 1:
        machine["host"] = ", ".join(hosts)
    return machine


def _profile_info(runs: Runs, setup: ReviewSetup, overrides: list[str] | tuple[str, ...]) -> dict:
    """The profile's settings as they ran (``setup.settings``), with what this review's runs and candidates add."""
    folds = {r.fold for r in runs.plan} - {None}
    settings = {**setup.settings,
                "ensembles": ", ".join(c.name for c in runs.candidates + runs.fold_ensembles) or "none",
                "seeds": len({r.seed for r in runs.plan}), "command_line_overrides": list(overrides) or "none",
                "cross_validation": f"{len(folds)} folds over cases, one run per fold and seed" if folds else "none"}
    return {"name": setup.profile, "description": setup.description, "settings": settings,
            "arch_options": {run.arch: run.options for run in runs.plan if run.seed == 0}}


def _data_info(runs: Runs, classes: Classes, source: str) -> dict:
    data = runs.first.data
    return {"source": source, "name": data.get("name", ""),
            "classes": ", ".join(classes.names), "in_channels": data.get("in_channels", ""),
            "splits": data.get("splits", {}), "notices": data.get("notices", [])}


def _architectures(setup: ReviewSetup, candidates: list[CandidateRecord]) -> dict[str, dict]:
    """Per row label, what the registry says of the architecture (its paper, blocks, strengths, weaknesses),
    and what each ensemble or TTA candidate combines."""
    described = {label: dict(facts) for label, facts in setup.architectures.items()}
    for c in candidates:
        described[c.name] = {"paper": "built from the trained runs, no retraining (docs/ensembles.md)",
                             "summary": f"{c.kind}: softmax probabilities of {' + '.join(c.members)} averaged"
                                        + (f" over flips {'+'.join(c.flips)} (every combination)" if c.flips else "")}
    return described


def write_review(
    review: ReviewInput, command: str, overrides: list[str] | tuple[str, ...] = (), margin: float = MARGIN,
    deployment: DeploymentBudget | None = None,
) -> Path:
    """Write ``OUT/report/`` for ``review`` (its plan finished or not; ``review_input`` gathers it) and return
    the HTML path. ``overrides``: the command line's ``--set`` values, printed with the profile's settings;
    ``margin``: the equivalence margin.

    The steps: the run folders read once (``_read_runs``) -> the evidence (per-unit scores, the comparison)
    -> one row per architecture (``_table``) -> figures -> the verdict and findings -> HTML and Markdown.
    ``deployment``: a deployment budget (not the training budget): the verdict compares only the architectures
    within it (the table keeps every architecture, the accuracy-vs-cost figures draw the limit)."""
    deployment, setup = deployment or DeploymentBudget(), review.setup
    report_dir = review.out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    runs = _read_runs(review)
    write_results(runs.rows + runs.anchor_rows, report_dir)
    classes = _classes(runs, setup.background)
    evidence, per_arch = _evidence(runs, margin)
    write_evidence(evidence, per_arch, report_dir)
    table = _table(runs, classes, evidence)
    write_results(table, report_dir, "summary")  # per architecture: figures over runs, the statistics' intervals
    figures, grid_notes = _figures(runs, classes, table, evidence, deployment, report_dir)
    devices = mixed_devices_warning(runs.rows)
    folds = fold_ensemble_section(runs.plan, runs.out, runs.fold_ensembles, margin)
    if folds:
        write_json(folds, report_dir / "fold_ensembles.json")
    inputs = ReportInputs(
        title=f"segbench review: {runs.first.data.get('name') or 'data'}, profile {setup.profile}",
        command=command, profile=_profile_info(runs, setup, overrides), machine=_machine(runs),
        data=_data_info(runs, classes, setup.data_source), table=table, accuracy_key=ACCURACY_KEY,
        class_keys=classes.dice_keys, class_names=classes.foreground, figures=figures,
        architectures=_architectures(setup, runs.candidates),
        findings=findings(table, ACCURACY_KEY), overall=overall_findings(table, ACCURACY_KEY),
        notes=_measurement_notes(runs.rows, setup, len({r.seed for r in runs.plan})) + grid_notes,
        warnings=[devices] if devices else [], show_devices=bool(devices), speed=setup.speed,
        verdict=_verdict(evidence, table, runs.rows + runs.anchor_rows, per_arch, margin, deployment, report_dir),
        fold_ensembles=folds,
    )
    columns = table_columns(table, [c.key for c in COLUMNS])
    write_markdown(inputs, report_dir / "report.md", columns)
    return write_html(inputs, report_dir / "index.html", columns)
