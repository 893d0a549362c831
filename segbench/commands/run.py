"""`segbench run`: train, validate and measure every architecture under one protocol, then write the
review (``OUT/report/index.html``). The work is in ``segbench.bench``; this file is the command line."""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time

import click

from segbench.bench.protocol.profiles import PROFILES

__all__ = ["run"]


def _split_archs(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [a.strip() for a in text.split(",") if a.strip()]


def _mention_other_runs(plan, out: str, report_only: bool) -> None:
    """Say when OUT holds run folders of other settings (they stay out of this report)."""
    from pathlib import Path

    ours = {run.run_dir.name for run in plan}
    from segbench.bench.protocol.record import is_sweep_run

    others = [p.name for p in sorted(Path(out).iterdir()) if p.is_dir() and is_sweep_run(p) and p.name not in ours] \
        if Path(out).is_dir() else []
    if others:
        click.echo(f"note: {out} also holds {len(others)} run folder(s) of other settings (e.g. {others[0]}); "
                   "they are not part of this report", err=True)
    if report_only and not any(run.finished for run in plan):
        click.echo("note: no finished run matches these settings yet; the report lists them as not run", err=True)


def _claim_sweep_folder(out: str) -> None:
    """OUT is new, empty, or a sweep (its marker, or run folders from an older segbench): never a folder of
    the user's whose report/index.html the review would overwrite."""
    from segbench.bench.protocol.record import CANDIDATES_DIR
    from segbench.bench.protocol.budget import BUDGET_DIR
    from segbench.bench.protocol.review_speed import SPEED_FILE
    from segbench.engine.run_folder import RunFolderError, claim_output
    from segbench.run_files import TRACKING_FILE

    try:
        claim_output(out, "sweep", files=("report/", SPEED_FILE, TRACKING_FILE, f"{CANDIDATES_DIR}/", f"{BUDGET_DIR}/"),
                     legacy=("report", SPEED_FILE, CANDIDATES_DIR, BUDGET_DIR))
    except RunFolderError as err:
        raise click.ClickException(str(err)) from None


def _build_candidates(plan, profile, out: str, top_k: int) -> None:
    """Ensembles and flip TTA from the finished runs, in this process (``segbench.bench.protocol.candidates``)."""
    from segbench.bench.protocol.candidates import build_candidates

    started = time.perf_counter()
    try:
        records = build_candidates(plan, profile, out, top_k=top_k, say=lambda m: click.echo(m, err=True))
    except KeyboardInterrupt:
        click.echo("\ninterrupted: run the same command again to finish the ensembles and the report", err=True)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - the report of the architectures is still written
        click.echo(f"candidates: not built: {type(err).__name__}: {err}", err=True)
        return
    click.echo(f"candidates: {len(records)} built, {time.perf_counter() - started:.0f} s", err=True)


def _check_data(plan) -> dict:
    """Check each dataset of the plan once, before any run: bad data, or a training split smaller than the
    batch, is one error, not one per architecture; its warnings are said once. Returns the first one's facts
    (``num_classes``, ``in_channels``), which a budget plan is measured with."""
    from segbench.commands.errors import user_errors
    from segbench.data import load_data
    from segbench.data.pipeline import check_batch_fits

    loaded, batches, facts = {}, set(), {}
    for run in plan:
        key = repr(run.config.data)
        with user_errors():  # a DataError: one line, exit status 1
            if key not in loaded:
                loaded[key] = load_data(run.config.data)
                for notice in loaded[key].notices:
                    click.echo(f"data: {notice}", err=True)
            if (key, run.config.train.batch_size) not in batches:
                batches.add((key, run.config.train.batch_size))
                check_batch_fits(loaded[key], run.config.train.batch_size)
        facts = facts or {"num_classes": loaded[key].num_classes, "in_channels": loaded[key].in_channels}
    return facts


def _given_plan(plan, profile, plan_file: str | None, data: dict | None):
    """``--plan FILE`` read and checked against this sweep, before OUT is claimed (a usage error otherwise)."""
    if plan_file is None:
        return None
    from segbench.bench.protocol.budget import PlanMismatch
    from segbench.bench.protocol.matched import is_planned, load_plan_file

    if not is_planned(plan):
        raise click.UsageError("--plan is for a time or flops budget (--budget time:SECONDS or flops:N)")
    try:
        return load_plan_file(plan, profile, plan_file, data)
    except PlanMismatch as err:
        raise click.UsageError(str(err)) from None


def _check_plan_wait() -> None:
    """SEGBENCH_PLAN_WAIT, checked before OUT is claimed (a time budget's plan reads it)."""
    from segbench.bench.protocol.matched import plan_wait

    try:
        plan_wait()
    except ValueError as err:
        raise click.UsageError(str(err)) from None


def _planned(plan, settings: dict, profile, out: str, data: dict | None, given, runner, training: bool = True):
    """The sweep with a time or FLOPs budget turned into each architecture's iterations (its plan reused from
    ``given`` or OUT, else measured now, on a Ray node like the runs' with ``runner``), and that plan."""
    from segbench.bench.protocol.matched import budget_plan
    from segbench.bench.protocol.sweep import plan_sweep

    remote = runner is not None and bool(runner.where)  # a launcher that runs elsewhere (Ray) measures there
    chosen = budget_plan(plan, profile, out, data, given=given, say=lambda m: click.echo(m, err=True),
                         measure=runner.call if remote else None)
    if chosen is None:
        return plan, None
    if not remote and training:  # the local workers compute at the threads the plan was measured at
        from segbench.bench.protocol.matched import pin_threads

        pinned = pin_threads(chosen)
        if pinned:
            click.echo(pinned, err=True)
    return plan_sweep(**settings, budget_plan=chosen), chosen


def _show_plan(plan, chosen) -> None:
    """``--show-plan``: each architecture's iterations and why, on stdout."""
    if chosen is not None:
        click.echo("\n".join(chosen.lines()))
        return
    t = plan[0].config.train
    kind = {"auto": f"until the validation metric stops improving, at most {t.iterations}",
            "time": f"timed during each run ({t.time_budget_s:g} s), at most {t.iterations}"}.get(t.budget, "fixed")
    click.echo(f"budget {t.budget}: {kind} iterations per run")
    for arch in dict.fromkeys(run.arch for run in plan):
        click.echo(f"  {arch}: {next(r for r in plan if r.arch == arch).config.train.iterations} iterations")


def _measure_speed(plan, profile, out: str, launcher) -> None:
    """The report's speed figures (reused from OUT/speed.json where the settings match), measured where the
    launcher runs a run (with Ray: in one task with a run's resources, so they come from a device like the
    runs' rather than the driver's)."""
    from pathlib import Path

    from segbench.bench.protocol.review_speed import data_facts, measure_review_speed

    data = data_facts(plan)
    if data is None:
        click.echo("speed: skipped, no run finished (the data's classes and channels come from one)", err=True)
        return
    started = time.perf_counter()
    if launcher.where:
        click.echo(f"speed: measuring {launcher.where}", err=True)
    done, _ = _call(launcher, "speed: not measured", "the speed figures", measure_review_speed, plan, profile,
                    str(Path(out).resolve()), data)
    if done:
        click.echo(f"speed: {time.perf_counter() - started:.0f} s", err=True)


def _call(launcher, refused: str, finish: str, fn, *args) -> tuple[bool, object]:
    """``fn(*args, say=...)`` where the launcher runs work (with Ray: a task with a run's resources): (True, its
    result), or (False, None) after saying ``refused`` and why when the launcher could not run it. Ctrl-C says
    that the same command finishes ``finish`` and the report, and exits 130."""
    from segbench.bench.protocol.sweep import LauncherError

    try:
        return True, launcher.call(fn, *args, say=lambda m: click.echo(m, err=True))
    except LauncherError as err:
        click.echo(f"{refused}: {err}", err=True)
        return False, None
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: run the same command again to finish {finish} and the report", err=True)
        sys.exit(130)


def _anchor_choices(text: str | None) -> list:
    """``--anchor`` (or the profile's) parsed; a usage error names the anchors."""
    from segbench.bench.protocol.anchor import parse_anchors

    try:
        return parse_anchors(text)
    except ValueError as err:
        raise click.UsageError(str(err)) from None


def _anchor_specs(choices: list, plan, profile, out: str, budget_plan, data: dict | None) -> list:
    """The anchors planned on ``plan`` (``data``: the data's facts, for timing steps under a time budget)."""
    import dataclasses

    import torch

    from segbench.bench.protocol.anchor import plan_anchor
    from segbench.engine.threads import cpu_allotment

    speed = None
    if budget_plan is not None and budget_plan.kind == "time" and data is not None:
        from segbench.bench.protocol.review_speed import review_speed_settings

        speed = dataclasses.asdict(review_speed_settings(plan, profile, data)[1])
    # As each zoo run computes (engine.threads.cap_threads): its allotment, which a time budget's plan pinned.
    threads = min(cpu_allotment()[0], torch.get_num_threads())
    return [plan_anchor(c, plan, profile, out, threads=threads, budget_plan=budget_plan, speed=speed) for c in choices]


def _anchor_python(given: str | None, asked: bool, profile) -> str | None:
    """The Python that runs the anchors, or None when none has nnU-Net: then one line says how to install it
    (and that the profile's anchor is skipped, when only the profile asked for it)."""
    from segbench.bench.protocol.anchor import AnchorMissing, find_python

    try:
        return find_python(given)
    except AnchorMissing as err:
        click.echo(str(err) if asked else f"{err} (the {profile.name} profile's anchor is skipped)", err=True)
        return None


def _run_anchors(specs, python: str | None, launcher) -> int:
    """Train and score every anchor (``launcher.call``: with Ray, one more task); the number of failed runs
    (their rows say why)."""
    from segbench.bench.protocol.anchor import run_anchor

    failed = 0
    for spec in specs if python else []:
        started = time.perf_counter()
        done, counts = _call(launcher, f"{spec.name}: not run", "the anchor", run_anchor, spec, python)
        if not done:
            continue
        failed += counts["failed"]
        click.echo(f"{spec.name}: {counts['ran']} ran ({counts['failed']} failed), {counts['skipped']} reused, "
                   f"{time.perf_counter() - started:.0f} s", err=True)
    return failed


def _launcher(name: str, options: dict):
    """The launcher ``name`` (``--launcher``) with the command line's launcher options (``--ray-address``, ...;
    None: not given); a usage error for an option it does not take."""
    from segbench.bench.protocol.sweep import make_launcher

    given = {k: v for k, v in options.items() if v is not None}
    try:
        return make_launcher(name, given, say=lambda m: click.echo(m, err=True))
    except ValueError as err:
        raise click.UsageError(str(err)) from None


def _connect(runner, plan, out: str):
    """``runner`` connected, with ``--out`` checked (a one-line error otherwise)."""
    from segbench.bench.protocol.sweep import LauncherError

    try:
        runner.connect(plan, out)
    except LauncherError as err:
        runner.close()
        raise click.ClickException(str(err)) from None
    return runner


def _open_review_tracking(out: str, trackers: tuple[str, ...], tracking_uri: str | None, params: dict):
    """The review's MLflow parent run (``segbench.bench.protocol.review_tracking``), its parameters the command's."""
    from segbench.bench.protocol.review_tracking import open_review_tracking

    return open_review_tracking(out, trackers, tracking_uri, params["profile"], params)


def _budget_option(kind: str):
    """A click callback parsing a budget option ("20ms", "300MB", "5") into the table's unit."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
        if value is None:
            return None
        from segbench.bench.report.deployment import parse_flops, parse_latency, parse_memory

        try:
            return {"latency": parse_latency, "memory": parse_memory, "flops": parse_flops}[kind](value)
        except ValueError as err:
            raise click.BadParameter(str(err)) from None

    return parse


@click.command()
@click.argument("data", required=False, default="brain-mri")
@click.option("--profile", type=click.Choice(list(PROFILES)), default="quick", show_default=True,
              help="quick: laptop CPU, slim backbones, ~15 min on 2 cores; standard: papers' backbones at 256x256, one GPU; "
              "paper: papers' settings at 512x512, GPUs (DeepLab v1/v2 with the papers' dense CRF where pydensecrf2 "
              "is installed, else ConvCRF).")
@click.option("--archs", help="Comma-separated architectures (default: the ten of the review; `segbench models` lists all).")
@click.option("--seeds", type=click.IntRange(min=1), help="Seeds per architecture (default: the profile's). "
              "With several, intervals and tests include seed-to-seed variation.")
@click.option("--margin", type=click.FloatRange(min=0), default=0.01, show_default=True,
              help="Equivalence margin in Dice: an architecture whose simultaneous interval of the difference from the "
              "leader lies inside +-MARGIN is called equivalent (the verdict names the cheapest of those).")
@click.option("--latency-budget", metavar="TIME", default=None, callback=_budget_option("latency"),
              help="Deployment budget, e.g. 20ms: the verdict names the most accurate architecture whose batch-1 "
              "latency (median over its runs, as `segbench predict` runs it, on this machine) is within it, comparing "
              "only those, and says which fell outside and by how much; the accuracy-vs-latency figure draws the line.")
@click.option("--latency-engine", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="onnx: also time each architecture's ONNX export in ONNX Runtime on the CPU (as `segbench predict "
              "--engine onnx` runs it; the table's ONNX latency column), and read --latency-budget against that.")
@click.option("--memory-budget", metavar="SIZE", default=None, callback=_budget_option("memory"),
              help="Deployment budget on inference memory (batch-1 forward pass, the table's Infer mem), e.g. 300MB.")
@click.option("--flops-budget", metavar="GFLOPS", default=None, callback=_budget_option("flops"),
              help="Deployment budget on FLOPs of one forward pass at the review's input size, in GFLOPs, e.g. 5.")
@click.option("--out", type=click.Path(file_okay=False), default="runs/review", show_default=True,
              help="Sweep folder: one run folder per architecture x seed, and report/.")
@click.option("--iterations", type=click.IntRange(min=1), help="Training iterations (default: the profile's).")
@click.option("--pretrained", type=click.Choice(["none", "imagenet", "both"]), default="none", show_default=True,
              help="Backbone start. imagenet: the encoder's published ImageNet weights wherever they fit the "
              "profile's backbone (rows ARCH+in1k; the others train from scratch and the run says why); both: "
              "each fitting architecture twice, from scratch (ARCH) and from ImageNet weights (ARCH+in1k).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Configuration override applied to every run, e.g. --set train.device=cpu (repeatable).")
@click.option("--report-only", is_flag=True, help="Rewrite the report from the finished runs; train nothing.")
@click.option("--speed/--no-speed", default=True, show_default=True,
              help="After training, time each architecture's training step and inference against its peer "
              "implementation (segbench speed at the review's size and batch) for the report's speed section.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars while training.")
@click.option("--budget", metavar="iterations:N|time:SECONDS|flops:N|auto", default=None,
              help="How long each run trains (default: the profile's). time: the same seconds of training steps for "
                   "every architecture, turned into each one's iterations before training by timing all their steps "
                   "side by side (saved in OUT/budget/, reused on resume), so a busy machine cannot skew it; flops: the "
                   "same training FLOPs (e.g. flops:500T); auto: until the validation metric stops improving "
                   "(train.patience, train.min_delta). All at most 4x the iterations.")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False), default=None,
              help="With a time or flops budget: take each architecture's iterations from this plan (another "
                   "sweep's OUT/budget/plan-*.json) instead of measuring, to reproduce its runs on another day or machine.")
@click.option("--show-plan", is_flag=True,
              help="Print each architecture's iterations and how they were derived (measuring the plan if OUT has "
                   "none yet), then stop without training.")
@click.option("--lr", "lr", type=click.Choice(["paper", "find"]), default=None,
              help="Learning rate (default: the profile's): paper, each family's published recipe; find, a range "
                   "test on the training split per run picks it (the lag-free smoothed loss's minimum / 10).")
@click.option("--folds", type=click.IntRange(min=0), default=None,
              help="Cross-validation: K >= 2 folds over cases (a lone volume: slabs), one run per architecture, fold "
                   "and seed; results and statistics over every fold.")
@click.option("--launcher", metavar="local|ray", default="local", show_default=True,
              help="local: one run after the other on this machine. ray: every run a Ray task with its own GPU(s) "
                   "or CPUs, as many at once as the machine or cluster holds (pip install 'segbench[ray]'); --out "
                   "must then be storage every node sees.")
@click.option("--ray-address", metavar="ADDR", default=None,
              help="With --launcher ray: the cluster to join (auto: the one `ray start` started here; HOST:6379). "
                   "Default: a running cluster if there is one, else a new one on this machine.")
@click.option("--gpus-per-run", type=click.IntRange(min=0), default=None,
              help="With --launcher ray: GPUs per run (default 1 where the cluster has GPUs, else 0); above 1 the run "
                   "trains data-parallel over them under torchrun.")
@click.option("--cpus-per-run", type=click.IntRange(min=1), default=None,
              help="With --launcher ray: CPUs per run (default: a GPU node's CPUs per GPU; on CPUs only, a whole "
                   "node, so timings are taken as the local launcher takes them).")
@click.option("--ensembles/--no-ensembles", default=None,
              help="After the sweep, from the trained runs (no retraining): each architecture with flip TTA and the "
                   "ensemble of the top architectures (softmax averaged) with and without TTA, scored on the same "
                   "validation units, judged against the best single architecture and timed by the same harness "
                   "(docs/ensembles.md). Default: on in every profile (--no-ensembles: without). With --report-only, "
                   "--ensembles builds them for a finished sweep.")
@click.option("--ensemble-top", type=click.IntRange(min=2), default=3, show_default=True,
              help="With --ensembles: how many architectures (the top by mean validation Dice per case) the "
                   "ensemble combines.")
@click.option("--anchor", "anchor", metavar="nnunet[:2d|3d_fullres][,nnunet-default]|none", default=None,
              help="The field's baseline as a row, on the same folds, seeds and budget, run by its own code in its "
                   "own environment (docs/anchor.md): nnunet (the review's budget in nnU-Net's units), nnunet-default "
                   "(nnU-Net's own 1000-epoch schedule). Default: the profile's (standard: nnunet; paper: both; "
                   "quick: none), where nnU-Net is installed.")
@click.option("--anchor-python", metavar="PYTHON", default=None,
              help="The Python with nnunetv2 that runs the anchor (default: SEGBENCH_ANCHOR_PYTHON, this Python, or "
                   ".venv-peers/bin/python, which `make peers` builds).")
@click.option("--max-retries", type=click.IntRange(min=0), default=None,
              help="With --launcher ray: how often a run whose worker or node was lost is retried (default 3; it "
                   "resumes from its last.pt).")
@click.option("--tracker", "trackers", multiple=True, metavar="none|tensorboard|mlflow",
              help="Every run also logs to TensorBoard (RUN/tensorboard; tensorboard --logdir OUT) and/or MLflow "
                   "(repeatable or comma-separated). With MLflow the review is a parent run whose children are its "
                   "runs, the report its artifacts. Changes no result: finished runs are reused. See docs/tracking.md.")
@click.option("--tracking-uri", metavar="URI",
              help="MLflow tracking URI for the review and its runs (http://HOST:PORT, sqlite:///PATH, ...); "
                   "default sqlite:///OUT/mlflow.db.")
def run(data, profile, archs, seeds, margin, latency_budget, latency_engine, memory_budget, flops_budget, out, iterations, pretrained, overrides, report_only, speed, progress, budget,
        plan_file, show_plan, lr, folds, launcher, ray_address, gpus_per_run, cpus_per_run, ensembles, ensemble_top,
        max_retries, trackers, tracking_uri, anchor, anchor_python) -> None:
    """Review every architecture on DATA (a dataset folder, or the built-in `brain-mri`, the default).

    Every architecture gets the same splits, augmentation, input size and iteration budget, its family's
    optimiser (SGD for CNNs, AdamW for transformers), and the same validation (and test) evaluation.
    Interrupt it at any time: the same command continues where it stopped and never repeats a
    finished run. `--launcher ray` runs the same runs as Ray tasks, on every GPU of this machine or
    across a Ray cluster; the run folders and the report do not depend on the launcher.
    """
    from segbench.bench.protocol.profiles import get_profile, with_available_crf
    from segbench.bench.protocol.review_input import review_input
    from segbench.bench.report.review import write_review
    from segbench.bench.protocol.sweep import imagenet_starts, plan_sweep, run_sweep
    from segbench.bench.protocol.review_tracking import tracking_overrides
    from segbench.commands.train import parse_trackers
    from segbench.config import ConfigError
    from segbench.engine.tracking import TrackerMissing

    chosen, crf_notes = with_available_crf(get_profile(profile))  # paper: the dense CRF where installed
    chosen = dataclasses.replace(chosen, latency_engine=latency_engine)
    for line in crf_notes:
        click.echo(line, err=True)
    try:
        trackers = parse_trackers(trackers) or ()
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    if tracking_uri and "mlflow" not in trackers:
        raise click.UsageError("--tracking-uri only with --tracker mlflow")
    try:
        tracking = tracking_overrides(trackers, tracking_uri, out)
    except TrackerMissing as err:  # one line naming the pip command
        raise click.ClickException(str(err)) from None
    runner = _launcher(launcher, dict(ray_address=ray_address, gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run,
                                      max_retries=max_retries))
    settings = dict(data=data, profile=chosen, out=out, archs=_split_archs(archs), seeds=seeds,
                    iterations=iterations, overrides=list(overrides) + tracking, budget=budget, lr=lr,
                    folds=folds or None)  # fmt: skip
    try:
        plan = plan_sweep(**settings)
        if pretrained != "none":  # decided on the resolved options (profile + --set), then planned again
            starts, from_scratch = imagenet_starts(plan, pretrained)
            for line in from_scratch:
                click.echo(line, err=True)
            settings["pretrained"] = starts
            plan = plan_sweep(**settings)
    except (KeyError, ValueError, TypeError, ConfigError) as err:
        raise click.UsageError(str(err.args[0] if isinstance(err, KeyError) and err.args else err)) from None

    command = shlex.join(["segbench", *sys.argv[1:]]) if sys.argv[1:2] == ["run"] else "segbench run"
    imagenet = sum(r.config.model.pretrained == "imagenet" for r in plan)
    click.echo(f"segbench run: profile {chosen.name}, {len({r.arch for r in plan})} architecture(s) x "
               f"{len({r.seed for r in plan})} seed(s)" + (f" x {folds} folds" if folds else "") +
               f", {len(plan)} run(s) ({imagenet} from ImageNet weights), "
               f"data {data}, out {out}", err=True)
    started = time.perf_counter()
    review_params = dict(data=data, profile=chosen.name, archs=",".join(sorted({r.arch for r in plan})), seeds=seeds,
                         iterations=iterations, budget=budget, lr=lr, folds=folds, pretrained=pretrained, margin=margin,
                         overrides=list(overrides))
    budget_plan = None
    anchor_choices = _anchor_choices(chosen.anchor if anchor is None else anchor)
    anchors = []
    if report_only:
        given = _given_plan(plan, chosen, plan_file, None)
        _claim_sweep_folder(out)
        plan, budget_plan = _planned(plan, settings, chosen, out, None, given, None, training=False)
        review_tracking = _open_review_tracking(out, trackers, tracking_uri, review_params)
        if ensembles:  # asked for: built from the finished runs, nothing trained
            _build_candidates(plan, chosen, out, ensemble_top)
        anchors = _anchor_specs(anchor_choices, plan, chosen, out, budget_plan, None)  # their finished runs, if any
    else:
        facts = _check_data(plan)
        given = _given_plan(plan, chosen, plan_file, facts)
        _check_plan_wait()
        # OUT is claimed (its marker written) only once the data and the cluster are known good: a refused
        # command leaves OUT as it found it.
        _connect(runner, plan, out)
        try:
            _claim_sweep_folder(out)
            plan, budget_plan = _planned(plan, settings, chosen, out, facts, given, runner)
            if show_plan:
                _show_plan(plan, budget_plan)
                return
            review_tracking = _open_review_tracking(out, trackers, tracking_uri, review_params)
            try:
                counts = run_sweep(plan, chosen, progress=progress, say=lambda m: click.echo(m, err=True),
                                   launcher=runner, tracking=review_tracking.context)
            except KeyboardInterrupt:
                click.echo("\ninterrupted: run the same command again to continue where it stopped", err=True)
                sys.exit(130)
            click.echo(f"sweep: {counts['ran']} ran ({counts['failed']} failed), {counts['skipped']} reused, "
                       f"{time.perf_counter() - started:.0f} s", err=True)
            if speed:
                _measure_speed(plan, chosen, out, runner)
            if chosen.ensembles if ensembles is None else ensembles:
                _build_candidates(plan, chosen, out, ensemble_top)
            python = _anchor_python(anchor_python, anchor is not None, chosen) if anchor_choices else None
            anchors = _anchor_specs(anchor_choices, plan, chosen, out, budget_plan, facts) if python else []
            _run_anchors(anchors, python, runner)  # a failed anchor is a failed row, not a failed review
        finally:
            runner.close()
    _mention_other_runs(plan, out, report_only)
    from segbench.bench.report.deployment import DeploymentBudget

    deployment = DeploymentBudget(latency_ms=latency_budget, infer_peak_mb=memory_budget, gflops=flops_budget,
                                  latency_engine=latency_engine)
    from segbench.bench.protocol.anchor import anchor_runs

    review = review_input(plan, chosen, out, budget_plan, [r for spec in anchors for r in anchor_runs(spec)])
    html = write_review(review, command, overrides, margin=margin, deployment=deployment)
    review_tracking.finish(html.parent)
    click.echo(f"report: {html}", err=True)
    click.echo(str(html))
    if not report_only and counts["failed"]:
        # The report is written with the failures in it; scripts still need to know.
        raise click.ClickException(f"{counts['failed']} of {len(plan)} run(s) failed (their errors are in the report "
                                   f"and in {out}/<run>/bench.json)")
