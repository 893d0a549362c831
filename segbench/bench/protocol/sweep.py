"""The sweep behind ``segbench run``: every chosen architecture x (fold x) seed under one protocol, resumable.

Each run's configuration is resolved in full (profile + per-architecture options + user overrides)
and hashed together with the measurement settings; the run lives in ``OUT/<arch>-s<seed>-<hash>``
(``OUT/<arch>-f<fold>-s<seed>-<hash>`` under cross-validation). Running the same command again skips
finished runs, continues an interrupted one from its last checkpoint (the engine resumes), and retries
failed ones; changing any setting changes the hash, so results of different settings never mix.

Every run executes in a worker process (:mod:`segbench.bench.protocol.worker`): a crash or an out-of-memory kill
is recorded in that architecture's row and the sweep goes on. A launcher decides where and when: one run
after the other on this machine (``LocalLauncher``, the default), or as Ray tasks across GPUs and machines
(:mod:`segbench.bench.protocol.launch_ray`); planning, folders, hashes, resuming and the failure records
are this module's whichever ran them (``SweepState``).

Backbone starts (``segbench run --pretrained``): ``imagenet_starts`` decides per architecture whether its
encoder's published ImageNet weights fit the profile's configuration (``imagenet_weights_fit`` of
``segbench.checkpoints.load``); a run that starts from them is labelled ``<arch>+in1k`` (its folder, its row),
so the same architecture from scratch and from ImageNet weights are two rows of the report. The sweep
fetches each encoder's weights once, before the first run that needs them; when they cannot be had (no
network, ``SEGBENCH_OFFLINE=1``) those runs fail at once with the reason in their rows.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from segbench.bench.protocol.budget import PLANNED_KINDS, BudgetPlan, parse_amount
from segbench.bench.protocol.profiles import REVIEW_ARCHS, Profile
from segbench.bench.protocol.record import RESULT_FILE, SPEC_FILE, SWEEP_FILES, WorkerResult
from segbench.bench.protocol.worker import run_worker_process
from segbench.engine import run_folder
from segbench.engine.tracking import TrackingContext
from segbench.config import Config, apply_overrides, config_from_dict, config_to_dict
from segbench.data import BUILTIN_DATASETS
from segbench.checkpoints.load import (
    IMAGENET_WEIGHTS, HashMismatchError, WeightsUnavailableError, imagenet_state_dict, imagenet_weights_fit,
)  # fmt: skip
from segbench.models.registry import list_models, model_options
from segbench.metric_defs import HEADLINE, metric
from segbench.jsonio import digest
from segbench.run_files import LAST_FILE

__all__ = ["PlannedRun", "plan_sweep", "run_sweep", "config_hash", "input_size", "imagenet_starts", "IMAGENET_SUFFIX",
           "SweepState", "Launcher", "LauncherError", "LocalLauncher", "LAUNCHERS", "make_launcher", "write_spec"]

IMAGENET_SUFFIX = "+in1k"  # the label of a run whose backbone starts from ImageNet-1k weights


@dataclass(frozen=True)
class PlannedRun:
    arch: str
    seed: int
    config: Config
    measure: dict  # how the worker measures the model (input size, timed runs); part of the hash
    config_hash: str
    run_dir: Path
    # How a time or FLOPs budget became this run's iterations (``BudgetPlan.run_record``; not hashed: the
    # iterations in the config are); empty for an iterations or auto budget.
    budget: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The run's name in the report and its folder: the architecture, ``+in1k`` when its backbone
        starts from ImageNet weights (so both starts of one architecture are separate rows)."""
        return self.arch + (IMAGENET_SUFFIX if self.config.model.pretrained == "imagenet" else "")

    @property
    def fold(self) -> int | None:
        """The cross-validation fold this run validates on (None: no cross-validation)."""
        return self.config.data.fold if self.config.data.folds else None

    @property
    def name(self) -> str:
        """The run among its architecture's runs: ``seed 0``, or ``fold 2 seed 0`` under cross-validation."""
        return (f"fold {self.fold} " if self.fold is not None else "") + f"seed {self.seed}"

    @property
    def finished(self) -> bool:
        """A previous invocation completed this exact run (same configuration hash)."""
        result = WorkerResult.read(self.run_dir)
        return result is not None and result.ok and result.hash == self.config_hash


# Settings that change no result: left out of the hash, so turning tracking on reuses finished runs.
UNHASHED_TRAIN_KEYS = ("trackers", "tracking_uri", "track_checkpoint")


def config_hash(cfg: Config, measure: dict) -> str:
    """Ten hex digits of the SHA-256 of the resolved configuration (but ``UNHASHED_TRAIN_KEYS``) and the
    measurement settings (sorted-key JSON): any change to either gives a new run folder."""
    values = config_to_dict(cfg)
    # train.anneal acts under the "auto" budget only: other budgets' folders keep the names they had before it.
    unhashed = UNHASHED_TRAIN_KEYS + (() if cfg.train.budget == "auto" else ("anneal",))
    values["train"] = {key: value for key, value in values["train"].items() if key not in unhashed}
    return digest({"config": values, "measure": measure})


def _measure_settings(cfg: Config, profile: Profile) -> dict:
    settings = {
        "input_size": list(input_size(cfg, profile)),
        "timing_rounds": profile.timing_rounds,
        "timing_max_warmup": profile.timing_max_warmup,
    }
    if profile.latency_engine != "torch":  # named only when asked: the folders of PyTorch-only runs keep their names
        settings["latency_engine"] = profile.latency_engine
    return settings


def _data_source(data: str) -> str:
    """A built-in dataset's name, or a folder by absolute path (so the hash does not depend on the
    working directory). Anything else is an error now rather than ten failed runs later."""
    if data in BUILTIN_DATASETS:
        return data
    path = Path(data).expanduser()
    if not path.is_dir():
        raise ValueError(f"no dataset folder at {data!r}; give a folder or a built-in dataset: {', '.join(BUILTIN_DATASETS)}")
    return str(path.resolve())


def _base_values(profile: Profile, data: str, iterations: int) -> dict:
    size = list(profile.input_size)
    values = {
        "data": {"source": _data_source(data)},
        "train": {
            "iterations": iterations,
            "batch_size": profile.batch_size,
            "val_interval": max(1, iterations // max(1, profile.validations)),
            "log_interval": max(1, iterations // 100),
            "checkpoint_interval": max(1, min(500, iterations // 10)),
            "best_metric": HEADLINE,  # the review's headline (segbench.metric_defs)
        },
    }
    if profile.resize_inputs:
        values["data"]["resize"] = size
    else:
        values["data"]["augment"] = {"crop_size": size}
        values["eval"] = {"mode": "slide", "window": size}
    return values


# With a "time", "flops" or "auto" budget a run may take this many times the profile's (or --iterations') steps.
BUDGET_CAP = 4


def parse_budget(text: str) -> tuple[str, float | int | None]:
    """``iterations`` / ``iterations:N`` / ``time:SECONDS`` / ``flops:N`` (``250T``: K, M, G, T, P) / ``auto``
    -> (kind, value)."""
    kind, _, value = str(text).partition(":")
    try:
        if kind == "iterations":
            number = int(value) if value else None
            if number is not None and number < 1:
                raise ValueError
            return kind, number
        if kind in PLANNED_KINDS:
            return kind, parse_amount(value)
        if kind == "auto" and not value:
            return kind, None
    except ValueError:
        pass
    raise ValueError(f"--budget {text!r}: expected iterations:N, time:SECONDS, flops:N or auto")


def plan_sweep(
    *,
    data: str,
    profile: Profile,
    out: str | Path,
    archs: list[str] | None = None,
    seeds: int | None = None,
    iterations: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    pretrained: dict[str, str | None | Sequence[str | None]] | None = None,
    budget: str | None = None,
    lr: str | None = None,
    folds: int | None = None,
    budget_plan: BudgetPlan | None = None,
) -> list[PlannedRun]:
    """Resolve every (architecture, start, seed) configuration. Raises ``KeyError``/``ValueError`` (with
    the valid choices) for unknown architectures, bad options or bad overrides, before anything runs.

    ``pretrained`` maps an architecture to its backbone start (``model.pretrained``: ``"imagenet"`` or a
    checkpoint file; None = from scratch) or to several, each planned in turn (``(None, "imagenet")``:
    both); architectures it does not name train from scratch. ``budget`` (default: the profile's):
    ``iterations[:N]``, ``time:SECONDS``, ``flops:N`` or ``auto`` (``parse_budget``); ``lr`` (default: the profile's):
    ``paper`` (each recipe's rate) or ``find`` (a range test per run, ``segbench.engine.lr_find``);
    ``folds`` K >= 2: one run per (architecture, start, fold, seed), fold k validating on the k-th fold.

    A ``time`` or ``flops`` budget is turned into each architecture's iterations by ``budget_plan``
    (``segbench.bench.protocol.matched``): its runs train that many iterations, validated and checkpointed
    on the same schedule as a fixed budget of that many. Without a plan a time budget is the engine's
    (timed during the run, ``train.time_budget_s``) and a FLOPs budget cannot run (``run_sweep`` refuses it)."""
    registered = list_models()
    archs = list(archs) if archs else list(REVIEW_ARCHS)
    unknown = [a for a in archs if a not in registered]
    if unknown:
        raise KeyError(f"unknown architecture(s) {', '.join(unknown)}; registered: {', '.join(registered)}")
    if len(set(archs)) != len(archs):
        raise ValueError(f"an architecture is listed twice: {', '.join(archs)}")
    seeds = profile.seeds if seeds is None else seeds
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if folds is not None and (folds == 1 or folds < 0):
        raise ValueError(f"--folds must be >= 2 (or 0: no cross-validation), got {folds}")
    # An explicit --iterations N without --budget asks for N iterations, whatever the profile's budget.
    kind, value = parse_budget(budget or ("iterations" if iterations is not None else profile.budget))
    if kind == "iterations" and value is not None and iterations is not None and value != iterations:
        # Two numbers for one thing: the run would train one of them without a word about the other.
        raise ValueError(f"--iterations {iterations} and --budget {budget} ask for different numbers of iterations; "
                         "give one of them")
    if kind == "iterations" and value is not None:
        iterations = value if iterations is None else iterations
    iterations = profile.iterations if iterations is None else iterations
    if iterations < 1:
        raise ValueError(f"--iterations must be >= 1, got {iterations}")
    out = Path(out)
    cap = iterations * BUDGET_CAP
    if budget_plan is not None:
        if kind not in PLANNED_KINDS:
            raise ValueError(f"a budget plan is for a time or flops budget, not --budget {kind}")
        if (budget_plan.kind, budget_plan.amount, budget_plan.cap) != (kind, value, cap):
            raise ValueError(f"the budget plan is for --budget {budget_plan.budget} (at most {budget_plan.cap} "
                             f"iterations), not {budget or profile.budget} (at most {cap})")
    base = _base_values(profile, data, iterations)  # validation, log and checkpoint intervals
    base["train"]["budget"] = kind if kind != "flops" else "iterations"
    lr = lr or profile.lr
    if lr not in ("paper", "find"):
        raise ValueError(f"--lr {lr!r}: expected paper or find")
    base["train"]["lr_policy"] = lr
    if kind == "time":
        base["train"]["time_budget_s"] = value
        base["train"]["iterations"] = iterations * BUDGET_CAP  # the cap: the measured speed plans the steps
    elif kind in ("auto", "flops"):
        base["train"]["iterations"] = cap
    plan = []
    for arch in archs:
        arch_base, budget_record = base, {}
        if kind in PLANNED_KINDS:
            budget_record = {"budget_given": str(budget or profile.budget), "budget_plan": None}
        if budget_plan is not None:
            if arch not in budget_plan.archs:
                raise ValueError(f"the budget plan has no count for {arch}")
            planned = budget_plan.archs[arch].iterations
            arch_base = _base_values(profile, data, planned)
            arch_base["train"].update(budget="iterations", lr_policy=lr)
            budget_record = budget_plan.run_record(arch)
        options = dict(profile.arch_options.get(arch, {}))
        valid = model_options(arch)
        bad = [k for k in options if k not in valid]
        if bad:
            raise ValueError(f"profile {profile.name!r} gives {arch} unknown option(s) {bad}; valid: {', '.join(valid)}")
        starts = (pretrained or {}).get(arch)
        starts = list(starts) if isinstance(starts, (list, tuple)) else [starts]
        for start in starts:
            for fold in range(folds) if folds else [None]:
                for seed in range(seeds):
                    values = json.loads(json.dumps(arch_base))
                    values["model"] = {"arch": arch, "options": options}
                    if start is not None:
                        values["model"]["pretrained"] = start
                    values["train"]["seed"] = seed
                    if fold is not None:
                        values["data"].update(folds=folds, fold=fold)
                    values = apply_overrides(values, [*profile.overrides, *overrides])
                    cfg = config_from_dict(values)
                    measure = _measure_settings(cfg, profile)
                    digest = config_hash(cfg, measure)
                    run = PlannedRun(arch, seed, cfg, measure, digest, out, budget=dict(budget_record))
                    folder = f"{run.label}-" + (f"f{fold}-" if fold is not None else "") + f"s{seed}-{digest}"
                    plan.append(dataclasses.replace(run, run_dir=out / folder))
    labels = [(run.label, run.fold, run.seed) for run in plan]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two planned runs share a label and seed (starts: {pretrained}); give each architecture "
                         "at most one start per label (from scratch, 'imagenet', a file)")  # fmt: skip
    return plan


def imagenet_starts(plan: list[PlannedRun], mode: str) -> tuple[dict[str, str | tuple[None, str]], list[str]]:
    """The ``pretrained`` argument of ``plan_sweep`` for ``segbench run --pretrained MODE`` (``imagenet``
    or ``both``), decided on ``plan`` (the same sweep planned from scratch, so the profile's options and
    the command line's overrides are resolved), and one line per architecture that trains from scratch
    only, saying why. An architecture whose encoder's published ImageNet weights fit its configuration
    starts from them (``imagenet``) or is planned twice, from scratch and from them (``both``)."""
    if mode not in ("imagenet", "both"):
        raise ValueError(f"--pretrained must be 'none', 'imagenet' or 'both', got {mode!r}")
    starts: dict[str, str | tuple[None, str]] = {}
    notes = []
    for arch, options in {run.arch: run.config.model.options for run in plan}.items():
        fits, why = imagenet_weights_fit(arch, options)
        if fits:
            starts[arch] = "imagenet" if mode == "imagenet" else (None, "imagenet")
        else:
            notes.append(f"{arch}: from scratch ({why})")
    return starts, notes


def input_size(cfg: Config, profile: Profile) -> tuple[int, int]:
    """The network input the run trains on (an override of ``data.resize`` or the crop wins over the
    profile's), which is also the size FLOPs and latency are measured at."""
    size = cfg.data.resize if profile.resize_inputs else cfg.data.augment.crop_size
    return tuple(size or profile.input_size)


def write_spec(run: PlannedRun, profile: Profile, tracking: TrackingContext | None = None) -> None:
    """Write ``run``'s spec (``sweep_run.json``: what its worker process runs) before every start, by every
    launcher; ``tracking``: where its tracker run belongs (a review's MLflow parent). The sweep's records are the
    run's files too: starting the run over deletes its result and preview, not the spec it was started from (it
    says what the folder is: ``is_sweep_run``)."""
    run_folder.claim(run.run_dir, files=SWEEP_FILES, inputs=(SPEC_FILE,))
    spec = {
        "hash": run.config_hash,
        "config": config_to_dict(run.config),
        "measure": run.measure,
        "preview_images": profile.preview_images,
        # Where the run's tracker run belongs (a review's MLflow parent); not part of the hash.
        "tracking": (tracking or TrackingContext()).to_dict(),
        "budget": run.budget,
    }
    (run.run_dir / SPEC_FILE).write_text(json.dumps(spec, indent=1))


def _execute(run: PlannedRun, progress: bool) -> WorkerResult:
    """Run the worker here; its ``bench.json``, or a failure record when it died without writing one."""
    return run_worker_process(run.run_dir, run.config_hash, progress)[0]


def _imagenet_encoder(run: PlannedRun) -> str | None:
    """The encoder whose ImageNet weights ``run`` starts from, or None."""
    if run.config.model.pretrained != "imagenet":
        return None
    return run.config.model.options.get("encoder", model_options(run.arch).get("encoder"))


def _fetch_weights(encoder: str, say: Callable[[str], None]) -> str | None:
    """Put ``encoder``'s ImageNet weights in the cache (downloading them at most once per sweep, so the
    workers never touch the network); the reason they cannot be had, or None."""
    if encoder not in IMAGENET_WEIGHTS:
        return None  # not a name with weights: the run's own load says so, with the valid choices
    say(f"ImageNet weights for {encoder}: from the cache, or downloading {IMAGENET_WEIGHTS[encoder].url}")
    try:
        imagenet_state_dict(encoder)
    except (WeightsUnavailableError, HashMismatchError) as err:
        return f"{type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001 - a damaged file or cache: that run's row, not the whole sweep
        return f"{type(err).__name__} while reading the weights: {err}"
    return None


@dataclass
class SweepState:
    """One ``run_sweep`` call as its launcher sees it: ``prepare`` a run before it starts, ``record`` it
    when it ends. The launcher decides only where and when runs execute (``LocalLauncher``, one after
    the other here; ``segbench.bench.protocol.launch_ray``, as Ray tasks); what a run needs and what it
    leaves (the spec, the failed-run records, the messages, the counts) is the same for all of them."""

    plan: list[PlannedRun]
    profile: Profile
    progress: bool
    say: Callable[[str], None]
    counts: dict[str, int] = field(default_factory=lambda: {"skipped": 0, "ran": 0, "failed": 0})
    weights_problem: dict[str, str | None] = field(default_factory=dict)  # per encoder: why its weights cannot be had
    tracking: TrackingContext | None = None  # the review's MLflow parent run and tags, for each run's trackers

    def label(self, run: PlannedRun) -> str:
        """``[2/4] unet seed 1 (unet-s1-<hash>)``: the run among the plan's, for messages."""
        index = next(k for k, planned in enumerate(self.plan, 1) if planned.run_dir == run.run_dir)
        return f"[{index}/{len(self.plan)}] {run.label} {run.name} ({run.run_dir.name})"

    def prepare(self, run: PlannedRun, queued: bool = False) -> WorkerResult | None:
        """Before ``run`` starts (or is ``queued`` to start elsewhere): its ImageNet weights in the cache
        and its spec written (None: it may start), or its failure record when its weights cannot be had."""
        resuming = (run.run_dir / LAST_FILE).is_file()  # holds trained weights: no ImageNet file needed
        encoder = None if resuming else _imagenet_encoder(run)
        if encoder is not None and encoder not in self.weights_problem:
            self.weights_problem[encoder] = _fetch_weights(encoder, self.say)
        if encoder is not None and self.weights_problem[encoder] is not None:
            run.run_dir.mkdir(parents=True, exist_ok=True)
            (run.run_dir / RESULT_FILE).unlink(missing_ok=True)  # the failure record is written by record()
            return WorkerResult(hash=run.config_hash,
                                error=f"no ImageNet weights for {encoder}, not trained: {self.weights_problem[encoder]}")
        if queued:
            self.say(f"{self.label(run)}: queued" + (" (it resumes from its last.pt)" if resuming else ""))
        else:
            self.say(f"{self.label(run)}: {'resuming' if resuming else 'starting'}")
        write_spec(run, self.profile, self.tracking)
        return None

    def record(self, run: PlannedRun, result: WorkerResult, elapsed: float) -> None:
        """``run`` ended with ``result`` after ``elapsed`` seconds: counted, said, and its failure record
        written when its worker died before writing one."""
        self.counts["ran"] += 1
        if result.ok:
            value = (result.metrics.get("val") or {}).get(run.config.train.best_metric)
            shown = f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
            self.say(f"{self.label(run)}: done in {elapsed:.0f} s, val {metric(run.config.train.best_metric).label} {shown}")
            return
        self.counts["failed"] += 1
        if not (run.run_dir / RESULT_FILE).is_file():  # the worker died before writing it
            run.run_dir.mkdir(parents=True, exist_ok=True)
            result.write(run.run_dir)
        self.say(f"{self.label(run)}: FAILED after {elapsed:.0f} s: {result.error}")


class LauncherError(RuntimeError):
    """A problem that stops the sweep before any run starts (no Ray, no node fits, ``--out`` not shared), or
    a launcher's ``call`` that failed; its message is the one line the command prints."""


class Launcher(Protocol):
    """Where and when the runs of a sweep execute: ``LocalLauncher`` here, ``launch_ray.RayLauncher`` as Ray
    tasks. ``segbench run`` calls ``connect``, then ``launch``, then ``call`` for the speed section, and
    ``close`` at the end whatever happened; it knows no launcher by name (``make_launcher`` builds one). A new
    launcher is a module with a class of these methods and a line in ``LAUNCHERS``."""

    # How ``call`` runs its function, for the command's messages ("" where it runs right here).
    where: str

    def connect(self, plan: list[PlannedRun], out: str | Path) -> None:
        """Get ready to run ``plan`` writing under ``out`` (join a cluster, check shared storage); raises
        ``LauncherError`` with the one line to print."""

    def launch(self, runs: list[PlannedRun], state: SweepState) -> None:
        """Execute every run of ``runs`` (none finished before), calling ``state.prepare`` before each
        starts and ``state.record`` when it ends."""

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` where a run would execute (the review's speed section is measured on a
        device like the runs'); ``LauncherError`` when it could not run there."""

    def close(self) -> None:
        """Release what ``connect`` took (idempotent)."""


class LocalLauncher:
    """``segbench run --launcher local`` (the default): one run after the other, each in a worker
    process on this machine."""

    where = ""

    def __init__(self, say: Callable[[str], None] = print) -> None:
        self.say = say

    def connect(self, plan: list[PlannedRun], out: str | Path) -> None:
        pass

    def launch(self, runs: list[PlannedRun], state: SweepState) -> None:
        for run in runs:
            started = time.perf_counter()
            result = state.prepare(run) or _execute(run, state.progress)
            state.record(run, result, time.perf_counter() - started)

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def close(self) -> None:
        pass


# ``--launcher NAME`` -> "module:class"; imported only when chosen (Ray is an optional extra). Each class takes
# ``say`` and its own options as keywords (``segbench run`` passes the ones given on its command line).
LAUNCHERS: dict[str, str] = {
    "local": "segbench.bench.protocol.sweep:LocalLauncher",
    "ray": "segbench.bench.protocol.launch_ray:RayLauncher",
}


def make_launcher(name: str, options: dict[str, Any], say: Callable[[str], None] = print) -> Launcher:
    """The launcher ``name`` with ``options`` (those given; the launcher's defaults for the rest). A launcher
    that takes none of them refuses them: ``ValueError`` naming the options."""
    import importlib
    import inspect

    if name not in LAUNCHERS:
        raise ValueError(f"no launcher {name!r}; known: {', '.join(LAUNCHERS)}")
    module, _, cls_name = LAUNCHERS[name].partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    accepted = set(inspect.signature(cls).parameters) - {"say"}
    refused = [f"--{k.replace('_', '-')}" for k in options if k not in accepted]
    if refused:
        raise ValueError(f"{', '.join(refused)}: not an option of --launcher {name}")
    return cls(say=say, **options)


def run_sweep(
    plan: list[PlannedRun], profile: Profile, *, progress: bool = True, say: Callable[[str], None] = print,
    launcher: Launcher | None = None, tracking: TrackingContext | None = None,
) -> dict[str, int]:
    """Run every planned run not finished before, with ``launcher`` (default: ``LocalLauncher``);
    returns counts: ``skipped``, ``ran``, ``failed``. ``tracking``: the review's parent run for the runs'
    trackers (``review_tracking``)."""
    unplanned = sorted({run.budget["budget_given"] for run in plan
                        if run.budget and run.budget.get("budget_plan") is None and run.config.train.budget != "time"})
    if unplanned:
        raise ValueError(f"--budget {unplanned[0]} needs a budget plan (plan_sweep's budget_plan) before runs can start")
    state = SweepState(plan, profile, progress, say, tracking=tracking)
    todo = []
    for run in plan:
        if run.finished:
            state.counts["skipped"] += 1
            say(f"{state.label(run)}: finished earlier, reusing its results")
        else:
            todo.append(run)
    (launcher or LocalLauncher()).launch(todo, state)
    return state.counts


# --- rows ----------------------------------------------------------------------------------------
