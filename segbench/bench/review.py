"""Assemble the review from a sweep's run folders: ``OUT/report/`` with ``index.html``, ``report.md``,
``results.csv``, ``results.json`` and the PNG figures.

Only the runs of the current plan are read, so a folder that also holds runs of other settings
never leaks them into the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbench.bench.report import plots
from segbench.bench.report.findings import findings, overall_findings
from segbench.bench.protocol.profiles import Profile
from segbench.bench.report.render import ReportInputs, table_columns, write_html, write_markdown
from segbench.bench.protocol.review_speed import read_review_speed, speed_section, throughput_figures
from segbench.bench.protocol.record import PREVIEW_FILE, CandidateRecord, WorkerResult, class_key, read_candidates
from segbench.bench.report.candidates import answer
from segbench.bench.report.columns import ACCURACY_KEY, COLUMNS
from segbench.bench.report.devices import arch_devices, device_runs, mixed_devices_warning
from segbench.bench.report.evidence import (
    MARGIN, Evidence, RunKey, RunScores, evidence_figures, gather, read_run_scores, write_evidence,
)  # fmt: skip
from segbench.bench.report.deployment import DEPLOYMENT_FILE, DeploymentBudget, split_by_budget
from segbench.bench.report.results import aggregate, write_results
from segbench.bench.report.verdict import verdict
from segbench.bench.protocol.runs import run_record
from segbench.bench.protocol.anchor import AnchorRun, anchor_record
from segbench.bench.protocol.budget import BudgetPlan
from segbench.bench.protocol.sweep import PlannedRun, input_size
from segbench.bench.measure.timing import NOISY_ABOVE, STABLE_WITHIN

from segbench.metric_defs import HEADLINE, metric
from segbench.jsonio import write_json
from segbench.models.registry import ARCHITECTURES
from segbench.run_files import LOG_FILE

__all__ = ["write_review", "ACCURACY_KEY"]



def _budget_text(t) -> str:
    """The run's budget in words, for the report's settings."""
    if t.budget == "time":
        return f"{t.time_budget_s:g} s of training steps per run (at most {t.iterations} iterations)"
    if t.budget == "auto":
        return (f"until {t.best_metric} gains at most {t.min_delta} over {t.patience} validations "
                f"(at most {t.iterations} iterations)")
    return f"{t.iterations} iterations"


def _plan_text(budget_plan: BudgetPlan) -> list[str]:
    """A time or FLOPs budget's plan in words, for the report's settings: what it gives and how each count
    was derived (``BudgetPlan.lines``), and what that means for the comparison."""
    if budget_plan.kind == "time":
        meaning = ("the seconds were turned into iterations before training, from every architecture's training "
                   "step timed side by side in one process (interleaved), and the runs trained exactly those "
                   "iterations: the load while they trained did not change what each got (their wall times are "
                   "recorded, not used). A load lasting through the measurement lengthens every step alike: the "
                   "ratios of the counts hold, their sizes shrink")
    else:
        meaning = ("the FLOPs were turned into iterations from each architecture's training FLOPs per step "
                   "(convolutions and matmuls, forward + backward): machine-independent, blind to how fast each runs")
    return [line.strip() for line in budget_plan.lines()] + [meaning]


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


def _current_candidates(out: Path, plan: list[PlannedRun]) -> list[CandidateRecord]:
    """The candidates of ``OUT/candidates/`` built from this plan's runs (an older plan's are ignored)."""
    planned = {run.run_dir.name for run in plan}
    return [c for c in read_candidates(out) if c.folders and not c.error
            and all(set(names) <= planned for names in c.member_runs.values())]


def _candidate_scores(out: Path, candidates: list[CandidateRecord]) -> dict[str, dict[RunKey, RunScores | None]]:
    """Each candidate's per-case scores, as a run's: the review's evidence compares them with the architectures."""
    return {c.name: {RunKey(*CandidateRecord.parse_key(key)): read_run_scores(out / folder)
                     for key, folder in c.folders.items()} for c in candidates}


def _candidate_rows(candidates: list[CandidateRecord], figures: dict[str, dict]) -> list[dict]:
    """Table rows of the candidates: what they combine, their cost (``price_candidates``) and ``figures``
    (the evidence's, and their answers against the best single architecture)."""
    rows = []
    for c in candidates:
        flips = f", flips {'+'.join(c.flips)}" if c.flips else ""
        keys = [CandidateRecord.parse_key(k) for k in c.folders]
        rows.append({"arch": c.name, "backbone": f"{c.kind}: {' + '.join(c.members)}{flips}", "runs": len(keys),
                     "seeds": len({s for _, s in keys}), "folds": len({f for f, _ in keys} - {None}), "failed_runs": 0,
                     "error": "", "candidate": c.kind, "forward_passes": c.cost.get("forward_passes"),
                     **{k: c.cost.get(k) for k in ("latency_ms", "latency_q1_ms", "latency_q3_ms", "latency_noisy",
                                                    "gflops", "infer_peak_mb")},
                     **figures.get(c.name, {})})
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
        latency, base = c.cost.get("latency_ms"), c.reference_cost.get("latency_ms")
        if isinstance(latency, (int, float)) and isinstance(base, (int, float)) and latency > base:
            row["dice_per_ms"] = diff / (latency - base)
    return out


def _first_ok(plan: list[PlannedRun], rows: list[dict]) -> dict[str, PlannedRun]:
    """Per architecture, its first successful run (the one whose curves and predictions are drawn)."""
    chosen: dict[str, PlannedRun] = {}
    for run, row in zip(plan, rows):
        if row["status"] == "ok" and run.label not in chosen:
            chosen[run.label] = run
    return chosen


def _curves(runs: dict[str, PlannedRun], rows: list[dict], metric: str) -> dict[str, dict[str, list[tuple[float, float]]]]:
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


def _prediction_grid(runs: dict[str, PlannedRun], class_names: list[str], path: Path) -> tuple[Path | None, list[str]]:
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


def _measurement_notes(rows: list[dict], profile: Profile, seeds: int) -> list[str]:
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
        f"{profile.input_size[0]}x{profile.input_size[1]}; matrix multiplications and convolutions only, "
        "2 FLOPs per multiply-add (twice the 'MACs' some papers call FLOPs).",
        f"Latency: batch-1 forward passes, {profile.timing_rounds} timed rounds after a warm-up that waits for "
        f"consecutive timings to agree within {STABLE_WITHIN:.0%} (at most {profile.timing_max_warmup} rounds); the "
        f"median [interquartile range]; a figure whose range exceeds {NOISY_ABOVE:.0%} of its median is measured "
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

    plan: list[PlannedRun]
    rows: list[dict]
    ok: dict[str, PlannedRun]  # per architecture, the run whose curves and predictions are drawn
    first: WorkerResult  # data and machine facts: a successful run's (any run's if none succeeded)
    out: Path
    candidates: list[CandidateRecord]  # ensembles and TTA built from these runs (segbench run --ensembles)
    anchors: list[AnchorRun] = ()  # the field's baseline (segbench run --anchor): rows after the zoo's, per run
    anchor_rows: list[dict] = ()  # their results rows, in the order of ``anchors``


@dataclass(frozen=True)
class Classes:
    names: list[str]
    foreground: list[str]
    dice_keys: list[str]  # per foreground class, the validation Dice's row key
    iou_keys: list[str]


def _read_runs(plan: list[PlannedRun], out: str | Path, anchors: list[AnchorRun] = ()) -> Runs:
    throughput = throughput_figures(read_review_speed(out))  # the Speed section's inference, one measurement
    rows = []
    for run in plan:
        row = run_record(run).row()
        rows.append({**row, **throughput.get(run.arch, {})} if row["status"] == "ok" else row)
    ok = _first_ok(plan, rows)
    source = next(iter(ok.values()), plan[0] if plan else None)
    first = (WorkerResult.read(source.run_dir) if source else None) or WorkerResult(hash="")
    return Runs(plan, rows, ok, first, Path(out), _current_candidates(Path(out), plan), list(anchors),
                [anchor_record(a).row() for a in anchors])


def _classes(runs: Runs) -> Classes:
    names = list(runs.first.data.get("class_names") or [])
    background = runs.plan[0].config.eval.background if runs.plan else 0
    foreground = [n for i, n in enumerate(names) if i != background]
    return Classes(names, foreground, [class_key("val", "dice", n) for n in foreground],
                   [class_key("val", "iou", n) for n in names])


def _evidence(runs: Runs, margin: float) -> tuple[Evidence | None, dict[str, dict[RunKey, RunScores | None]]]:
    """The statistics' input (every run's per-unit scores, by architecture and (fold, seed)) and what they show."""
    per_arch: dict[str, dict[RunKey, RunScores | None]] = {}
    for run, row in zip(runs.plan, runs.rows):
        scores = read_run_scores(run.run_dir) if row["status"] == "ok" else None
        per_arch.setdefault(run.label, {})[RunKey(run.fold, run.seed)] = scores
    for anchor, row in zip(runs.anchors, runs.anchor_rows):
        scores = read_run_scores(anchor.run_dir) if row["status"] == "ok" else None
        per_arch.setdefault(anchor.label, {})[RunKey(anchor.fold, anchor.seed)] = scores
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
    anchors = [{**row, "anchor": True} for row in aggregate(list(runs.anchor_rows), keys, extra=extra)]
    return aggregate(runs.rows, keys, extra=extra) + anchors + _candidate_rows(runs.candidates, {**extra, **candidates})


def _figures(runs: Runs, classes: Classes, table: list[dict], evidence: Evidence | None, deployment: DeploymentBudget,
             report_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """The report's figures by title (the accuracy-vs-cost ones with the deployment budget's limit drawn), and
    notes on what could not be drawn."""
    figures = {
        "Accuracy vs FLOPs": plots.pareto_scatter(table, "gflops", ACCURACY_KEY, report_dir / "accuracy_vs_flops.png",
                                                  deployment.gflops),
        "Accuracy vs latency": plots.pareto_scatter(table, "latency_ms", ACCURACY_KEY,
                                                    report_dir / "accuracy_vs_latency.png", deployment.latency_ms),
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


def _profile_info(plan: list[PlannedRun], profile: Profile, overrides: list[str] | tuple[str, ...],
                  candidates: list[CandidateRecord], budget_plan: BudgetPlan | None) -> dict:
    """The profile's settings as they actually ran (the command line may have changed its values)."""
    settings = profile.settings()
    if plan:
        cfg = plan[0].config
        height, width = input_size(cfg, profile)
        budget = _budget_text(cfg.train) if budget_plan is None else "; ".join(_plan_text(budget_plan))
        iterations = cfg.train.iterations if budget_plan is None else "per architecture, from the budget plan"
        settings.update(input_size=f"{height}x{width}", iterations=iterations, budget=budget,
                        batch_size=cfg.train.batch_size, val_interval=cfg.train.val_interval,
                        convergence=f"{cfg.train.best_metric} gained at most {cfg.train.min_delta} over the last "
                                    f"{cfg.train.patience} validations")
    folds = {r.fold for r in plan} - {None}
    settings.update(ensembles=", ".join(c.name for c in candidates) or "none", seeds=len({r.seed for r in plan}), command_line_overrides=list(overrides) or "none",
                    cross_validation=f"{len(folds)} folds over cases, one run per fold and seed" if folds else "none")
    return {"name": profile.name, "description": profile.description, "settings": settings,
            "arch_options": {run.arch: run.config.model.options for run in plan if run.seed == 0}}


def _data_info(runs: Runs, classes: Classes) -> dict:
    data = runs.first.data
    return {"source": runs.plan[0].config.data.source if runs.plan else "", "name": data.get("name", ""),
            "classes": ", ".join(classes.names), "in_channels": data.get("in_channels", ""),
            "splits": data.get("splits", {}), "notices": data.get("notices", [])}


def _architectures(plan: list[PlannedRun], candidates: list[CandidateRecord], anchors: list[AnchorRun] = ()) -> dict[str, dict]:
    """Per row label, what the registry says of the architecture (its paper, blocks, strengths, weaknesses),
    and what each ensemble or TTA candidate combines."""
    described = {r.label: {k: getattr(ARCHITECTURES[r.arch], k) for k in ("paper", "year", "summary", "blocks",
                                                                          "strengths", "weaknesses")} for r in plan}
    for a in anchors:
        described[a.label] = {
            "paper": "Isensee et al., nnU-Net: a self-configuring method for deep learning-based biomedical image "
                     "segmentation, Nature Methods 2021 (the anchor: docs/anchor.md)", "year": 2021,
            "summary": "nnU-Net run by its own code: it plans its U-Net, patch, batch, normalisation and augmentation "
                       "from the data, trains on the review's training cases"
                       + (" for its own 1000 x 250 schedule" if "default" in a.label else " for the review's budget")
                       + " and predicts with sliding windows and mirroring; scored by segbench's metrics."}
    for c in candidates:
        described[c.name] = {"paper": "built from the trained runs, no retraining (docs/ensembles.md)",
                             "summary": f"{c.kind}: softmax probabilities of {' + '.join(c.members)} averaged"
                                        + (f" over flips {'+'.join(c.flips)} (every combination)" if c.flips else "")}
    return described


def write_review(
    plan: list[PlannedRun], profile: Profile, out: str | Path, command: str, overrides: list[str] | tuple[str, ...] = (),
    margin: float = MARGIN, budget_plan: BudgetPlan | None = None, deployment: DeploymentBudget | None = None,
    anchors: list[AnchorRun] = (),
) -> Path:
    """Write ``OUT/report/`` for ``plan`` (finished or not) and return the HTML path. ``overrides``: the
    command line's ``--set`` values, printed with the profile's settings; ``margin``: the equivalence margin.

    The steps: the run folders read once (``_read_runs``) -> the evidence (per-unit scores, the comparison)
    -> one row per architecture (``_table``) -> figures -> the verdict and findings -> HTML and Markdown.
    ``budget_plan``: how a time or FLOPs budget became each architecture's iterations (its runs' plan);
    ``deployment``: a deployment budget (not the training budget): the verdict compares only the architectures
    within it (the table keeps every architecture, the accuracy-vs-cost figures draw the limit)."""
    deployment = deployment or DeploymentBudget()
    report_dir = Path(out) / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    runs = _read_runs(plan, out, anchors)
    write_results(runs.rows + list(runs.anchor_rows), report_dir)
    classes = _classes(runs)
    evidence, per_arch = _evidence(runs, margin)
    write_evidence(evidence, per_arch, report_dir)
    table = _table(runs, classes, evidence)
    write_results(table, report_dir, "summary")  # per architecture: figures over runs, the statistics' intervals
    figures, grid_notes = _figures(runs, classes, table, evidence, deployment, report_dir)
    devices = mixed_devices_warning(runs.rows)
    inputs = ReportInputs(
        title=f"segbench review: {runs.first.data.get('name') or 'data'}, profile {profile.name}",
        command=command, profile=_profile_info(plan, profile, overrides, runs.candidates, budget_plan), machine=_machine(runs),
        data=_data_info(runs, classes), table=table, accuracy_key=ACCURACY_KEY, class_keys=classes.dice_keys,
        class_names=classes.foreground, figures=figures, architectures=_architectures(plan, runs.candidates, runs.anchors),
        findings=findings(table, ACCURACY_KEY), overall=overall_findings(table, ACCURACY_KEY),
        notes=_measurement_notes(runs.rows, profile, len({r.seed for r in plan})) + grid_notes,
        warnings=[devices] if devices else [], show_devices=bool(devices), speed=speed_section(out, plan, runs.rows),
        verdict=_verdict(evidence, table, runs.rows + list(runs.anchor_rows), per_arch, margin, deployment, report_dir),
    )
    columns = table_columns(table, [c.key for c in COLUMNS])
    write_markdown(inputs, report_dir / "report.md", columns)
    return write_html(inputs, report_dir / "index.html", columns)
