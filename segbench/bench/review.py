"""Assemble the review from a sweep's run folders: ``OUT/report/`` with ``index.html``, ``report.md``,
``results.csv``, ``results.json`` and the PNG figures.

Only the runs of the current plan are read, so a folder that also holds runs of other settings
never leaks them into the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from segbench.bench.report import plots
from segbench.bench.report.findings import findings, overall_findings
from segbench.bench.protocol.profiles import Profile
from segbench.bench.report.render import ReportInputs, table_columns, write_html, write_markdown
from segbench.bench.protocol.review_speed import read_review_speed, speed_section, throughput_figures
from segbench.bench.protocol.record import PREVIEW_FILE, WorkerResult, class_key
from segbench.bench.report.columns import ACCURACY_KEY, COLUMNS
from segbench.bench.report.devices import arch_devices, device_runs, mixed_devices_warning
from segbench.bench.report.deployment import DEPLOYMENT_FILE, DeploymentBudget, split_by_budget
from segbench.bench.report.evidence import MARGIN, Evidence, RunKey, gather, read_run_scores, write_evidence
from segbench.bench.report.results import aggregate, write_results
from segbench.bench.report.verdict import verdict
from segbench.bench.protocol.runs import run_record
from segbench.bench.protocol.sweep import PlannedRun, input_size
from segbench.bench.measure.timing import NOISY_ABOVE, STABLE_WITHIN

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


def _add_evidence(table: list[dict], evidence: Evidence | None) -> None:
    """The table's headline accuracy (the evidence's one quantity) with its interval, and each architecture's
    difference from the leader with its simultaneous interval and answer (columns.py names them)."""
    comparison = evidence.comparison if evidence is not None else None
    standings = {s.name: s for s in comparison.standings} if comparison is not None else {}
    for row in table:
        s = standings.get(row["arch"])
        if s is None:
            continue
        row.update(val_unit_dice=s.mean, val_unit_dice_low=_number(s.low), val_unit_dice_high=_number(s.high))
        if s.status != "leader":
            row.update(val_vs_leader=s.diff, val_vs_leader_low=_number(s.diff_low), val_vs_leader_high=_number(s.diff_high))
        if comparison.inferential and len(standings) > 1:
            row["val_answer"] = "not shown learned" if not s.learned else s.status


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
        "quantity. mIoU: dataset-level confusion matrix over all classes including background (MMSegmentation's "
        "IoUMetric). HD95: MedPy's pooled 95th-percentile surface distance per case and foreground class, in mm "
        "where the data has a voxel spacing and in pixels otherwise; a missed or invented structure counts as the "
        "diagonal of the case's extent, a structure absent from both is left out.",
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


def write_review(
    plan: list[PlannedRun], profile: Profile, out: str | Path, command: str, overrides: list[str] | tuple[str, ...] = (),
    margin: float = MARGIN, deployment: DeploymentBudget | None = None,
) -> Path:
    """Write ``OUT/report/`` for ``plan`` (finished or not) and return the HTML path. ``overrides``: the
    command line's ``--set`` values, printed with the profile's settings; ``margin``: the equivalence margin;
    ``deployment``: a deployment budget (not the training ``budget``): the verdict compares only the architectures within it (the table and
    its figures keep every architecture, the accuracy-vs-cost figures draw the limit)."""
    report_dir = Path(out) / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    rows = [run_record(run).row() for run in plan]
    throughput = throughput_figures(read_review_speed(out))  # the Speed section's inference, one measurement
    for run, row in zip(plan, rows):
        if row["status"] == "ok":
            row.update(throughput.get(run.arch, {}))
    write_results(rows, report_dir)

    ok_runs = _first_ok(plan, rows)
    # Data and machine facts come from a successful run (any run if none succeeded).
    source = next(iter(ok_runs.values()), plan[0] if plan else None)
    first = (WorkerResult.read(source.run_dir) if source else None) or WorkerResult(hash="")
    data = first.data
    class_names = list(data.get("class_names") or [])
    background = plan[0].config.eval.background if plan else 0
    fg_names = [n for i, n in enumerate(class_names) if i != background]
    dice_keys = [class_key("val", "dice", n) for n in fg_names]
    iou_keys = [class_key("val", "iou", n) for n in class_names]

    keys = [k for c in COLUMNS for k in c.keys] + dice_keys + iou_keys
    table = aggregate(rows, keys)
    per_arch: dict[str, dict] = {}
    for run, row in zip(plan, rows):
        scores = read_run_scores(run.run_dir) if row["status"] == "ok" else None
        per_arch.setdefault(run.label, {})[RunKey(run.fold, run.seed)] = scores
    evidence = gather(per_arch, margin=margin)
    _add_evidence(table, evidence)
    write_evidence(evidence, per_arch, report_dir)
    write_results(table, report_dir, "summary")  # per architecture: means over runs, intervals, p vs best
    columns = table_columns(table, [c.key for c in COLUMNS])

    figures: dict[str, Path] = {}
    deployment = deployment or DeploymentBudget()
    figures["Accuracy vs FLOPs"] = plots.pareto_scatter(table, "gflops", ACCURACY_KEY, report_dir / "accuracy_vs_flops.png",
                                                        deployment.gflops)
    figures["Accuracy vs latency"] = plots.pareto_scatter(table, "latency_ms", ACCURACY_KEY,
                                                          report_dir / "accuracy_vs_latency.png", deployment.latency_ms)
    curves = _curves(ok_runs, rows, "dice_fg_per_case")
    if curves:
        title = ("Training curves" + (" (first seed)" if len({r.seed for r in plan}) > 1 else "")
                 + ": ring, last real gain; end square, converged; end triangle, cut by the budget while improving")
        figures[title] = plots.training_curves(curves, "Dice (fg, per case)", report_dir / "training_curves.png")
    if dice_keys and table:
        figures["Per-class Dice (val)"] = plots.class_heatmap(table, dice_keys, fg_names, report_dir / "class_dice.png")
    comparison = evidence.comparison if evidence is not None else None
    if comparison is not None and comparison.inferential and len(comparison.standings) > 1:
        label = f"{evidence.metric} per {evidence.unit} (95% interval)"
        figures["Accuracy with its uncertainty"] = plots.intervals(
            {s.name: (s.mean, s.low, s.high) for s in comparison.standings}, set(comparison.best_set), label,
            report_dir / "accuracy_intervals.png")
        figures["Ranking robustness (bootstrap)"] = plots.rank_distribution(
            comparison.rank_counts, {s.name: float(i) for i, s in enumerate(comparison.standings, 1)},
            report_dir / "rank_distribution.png")
    grid, grid_notes = _prediction_grid(ok_runs, class_names, report_dir / "predictions.png")
    if grid is not None:
        figures["Predictions on the same validation images (best checkpoint)"] = grid

    seeds = len({r.seed for r in plan})
    machine = dict(first.machine)
    devices = mixed_devices_warning(rows)
    if devices:  # the table names each row's device; the machine section every model and host
        for row in table:
            row["device_name"] = arch_devices(rows).get(row["arch"], row.get("device_name"))
        machine["device_name"] = "; ".join(device_runs(rows))
    hosts = sorted({str(r["host"]) for r in rows if r.get("status") == "ok" and r.get("host")})
    if len(hosts) > 1:
        machine["host"] = ", ".join(hosts)
    settings = profile.settings()
    if plan:  # what actually ran: the command line may have changed the profile's values
        cfg = plan[0].config
        height, width = input_size(cfg, profile)
        budget = _budget_text(cfg.train)
        settings.update(input_size=f"{height}x{width}", iterations=cfg.train.iterations, budget=budget,
                        batch_size=cfg.train.batch_size, val_interval=cfg.train.val_interval,
                        convergence=f"{cfg.train.best_metric} gained at most {cfg.train.min_delta} over the last "
                                    f"{cfg.train.patience} validations")
    folds = {r.fold for r in plan} - {None}
    settings.update(seeds=seeds, command_line_overrides=list(overrides) or "none",
                    cross_validation=f"{len(folds)} folds over cases, one run per fold and seed" if folds else "none")
    profile_info = {
        "name": profile.name,
        "description": profile.description,
        "settings": settings,
        "arch_options": {run.arch: run.config.model.options for run in plan if run.seed == 0},
    }
    data_info = {
        "source": plan[0].config.data.source if plan else "",
        "name": data.get("name", ""),
        "classes": ", ".join(class_names),
        "in_channels": data.get("in_channels", ""),
        "splits": data.get("splits", {}),
        "notices": data.get("notices", []),
    }
    inputs = ReportInputs(
        title=f"segbench review: {data.get('name') or 'data'}, profile {profile.name}",
        command=command,
        profile=profile_info,
        machine=machine,
        data=data_info,
        table=table,
        accuracy_key=ACCURACY_KEY,
        class_keys=dice_keys,
        class_names=fg_names,
        figures=figures,
        architectures={
            r.label: {k: getattr(ARCHITECTURES[r.arch], k)
                      for k in ("paper", "year", "summary", "blocks", "strengths", "weaknesses")}
            for r in plan
        },
        findings=findings(table, ACCURACY_KEY),
        overall=overall_findings(table, ACCURACY_KEY),
        notes=_measurement_notes(rows, profile, seeds) + grid_notes,
        warnings=[devices] if devices else [],
        show_devices=bool(devices),
        speed=speed_section(out, plan, rows),
        verdict=_verdict(evidence, table, rows, per_arch, margin, deployment, report_dir),
    )
    write_markdown(inputs, report_dir / "report.md", columns)
    return write_html(inputs, report_dir / "index.html", columns)
