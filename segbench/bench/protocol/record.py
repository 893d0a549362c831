"""What a run of the sweep leaves in its folder, as typed records: the one definition of the run-folder
files the review adds to the engine's (``segbench.engine.run_folder``), of ``bench.json``'s keys, and of
the flat results row. Imports no torch, so the report can read them.

- ``WorkerResult`` is ``bench.json``: how the worker ended, the machine, the data's facts, the figures of
  ``segbench.bench.measure.cost`` (``measure``), the engine's ``metrics.json`` (``metrics``) and how a time
  or FLOPs budget became its iterations (``budget``), each under its producer's own names;
- ``RunRecord`` is one row of ``results.csv``: what ran (identity) and every scalar figure the producers
  recorded, under the same names (split scores prefixed ``val_`` / ``test_``). A new figure needs a key
  in its producer's output and a ``Column`` in ``segbench.bench.report.columns``; nothing in between;
- ``ReviewInput`` is what the report of a plan reads besides the run folders: each planned run's identity and
  row (``ReviewRun``) and how the review ran (``ReviewSetup``), gathered by
  ``segbench.bench.protocol.review_input`` so that the report needs neither the plan nor the registry.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Union

from segbench.jsonio import write_json

__all__ = ["SPEC_FILE", "RESULT_FILE", "PREVIEW_FILE", "SWEEP_FILES", "is_sweep_run", "WorkerResult", "RunRecord", "class_key",
           "figures_of", "ReviewRun", "ReviewSetup", "ReviewInput", "CANDIDATES_DIR", "CANDIDATES_FILE",
           "CandidateRecord", "write_candidates", "read_candidates"]

SPEC_FILE = "sweep_run.json"  # what the sweep asks the worker to run
RESULT_FILE = "bench.json"  # the worker's WorkerResult
PREVIEW_FILE = "preview.npz"  # a few validation images with truth and prediction, for the report
SWEEP_FILES = (SPEC_FILE, RESULT_FILE, PREVIEW_FILE)  # beside the engine's run files

Scalar = Union[str, int, float, bool, None]


def is_sweep_run(folder: str | Path) -> bool:
    """Whether ``folder`` is a run of a review sweep (the sweep wrote its spec there)."""
    return (Path(folder) / SPEC_FILE).is_file()


def class_key(split: str, metric: str, class_name: str) -> str:
    """``val_dice_tumour`` for ("val", "dice", "tumour"); non-identifier characters become ``_``."""
    safe = re.sub(r"[^0-9A-Za-z]+", "_", str(class_name)).strip("_") or "class"
    return f"{split}_{metric}_{safe}"


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


@dataclass
class WorkerResult:
    """``bench.json``: written once by the worker (or by the sweep for a worker that died)."""

    hash: str
    status: str = "failed"  # "ok" or "failed"
    error: str = ""
    traceback: str = ""
    machine: dict[str, Any] = field(default_factory=dict)  # segbench.bench.measure.cost.machine_info
    data: dict[str, Any] = field(default_factory=dict)  # name, num_classes, in_channels, class_names, splits, ...
    measure: dict[str, Any] = field(default_factory=dict)  # segbench.bench.measure.cost.measure_inference
    metrics: dict[str, Any] = field(default_factory=dict)  # the engine's metrics.json
    # How a time or FLOPs budget became the run's iterations (segbench.bench.protocol.budget.BudgetPlan.run_record)
    budget: dict[str, Any] = field(default_factory=dict)
    train_peak_mb: float | None = None
    train_memory_method: str | None = None
    session_wall_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def write(self, run_dir: str | Path) -> None:
        """Atomically (a killed worker leaves the previous file or none, never half of one)."""
        write_json(asdict(self), Path(run_dir) / RESULT_FILE)

    @classmethod
    def read(cls, run_dir: str | Path) -> WorkerResult | None:
        """The run's ``bench.json``; None when it is missing or unreadable."""
        try:
            data = json.loads((Path(run_dir) / RESULT_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}) if isinstance(data, dict) and "hash" in data else None


def figures_of(result: WorkerResult) -> dict[str, Scalar]:
    """Every scalar figure of a worker's result, under its producer's name: the measurement's, the
    training's, the machine's, and each split's scores prefixed with the split (``val_mIoU``), with
    per-class Dice and IoU as ``class_key`` columns."""
    out: dict[str, Scalar] = {}
    for key, value in result.measure.items():
        if _scalar(value):
            out[key] = value
    for key, value in result.budget.items():
        if _scalar(value):
            out[key] = value
    for key in ("train_peak_mb", "train_memory_method"):
        out[key] = getattr(result, key)
    for key in ("infer_peak_mb", "train_peak_mb"):  # a 0 from a bench.json of before: the method saw nothing
        if out.get(key) == 0:
            out[key] = None
    for key in ("host", "device", "device_name", "torch", "torch_threads"):
        out[key] = result.machine.get(key)
    for key, value in result.metrics.items():
        if key in ("val", "test"):
            for name, score in (value or {}).items():
                if _scalar(score):
                    out[f"{key}_{name}"] = score
            for name, score in ((value or {}).get("dice_per_case") or {}).items():
                out[class_key(key, "dice", name)] = score
            for name, score in (((value or {}).get("per_class") or {}).get("IoU") or {}).items():
                out[class_key(key, "iou", name)] = score
        elif _scalar(value):
            out[key] = value
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


@dataclass
class RunRecord:
    """One run as the report reads it: what ran, how it ended, and its figures (see ``figures_of``)."""

    arch: str  # the row's label: the architecture, ``+in1k`` when it starts from ImageNet weights
    seed: int
    fold: int | None  # the cross-validation fold it validated on; None without cross-validation
    status: str
    error: str
    recipe: str  # the optimiser recipe it followed: "cnn" or "transformer"
    year: int
    backbone: str  # "resnet18 (output_stride=8), ImageNet weights"
    model_options: str  # JSON
    pretrained: str
    input_size: str
    iterations: int
    batch_size: int
    config_hash: str
    run_dir: str
    has_preview: bool = False
    figures: dict[str, Scalar] = field(default_factory=dict)

    def row(self) -> dict[str, Scalar]:
        """The flat ``results.csv`` row: identity, then every figure."""
        identity = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "figures"}
        return {**identity, **self.figures}


# --- what the report of a plan reads (segbench.bench.protocol.review_input gathers it) ----------------------


@dataclass(frozen=True)
class ReviewRun:
    """One planned run as the report reads it: who it is, where its folder is, and its results row."""

    label: str  # its row's name: the architecture, ``+in1k`` when its backbone started from ImageNet weights
    arch: str  # the registered architecture
    seed: int
    fold: int | None  # the cross-validation fold it validated on; None without cross-validation
    run_dir: Path
    options: dict[str, Any]  # the model options it ran with (the profile's, then the command line's)
    row: dict[str, Scalar]  # its ``RunRecord.row()``, with the Speed section's throughput when it succeeded


@dataclass(frozen=True)
class ReviewSetup:
    """How the review ran, as the report states it: what the run folders do not say."""

    profile: str  # the profile's name
    description: str
    settings: dict[str, Any]  # the profile's settings as they ran (the command line may have changed them)
    measured_size: tuple[int, int]  # height, width at which FLOPs and latency are measured (the profile's)
    timing_rounds: int  # timed rounds per latency figure
    timing_max_warmup: int  # at most this many warm-up rounds
    stable_within: float  # the warm-up ends when consecutive timings agree within this share
    noisy_above: float  # a figure whose interquartile range exceeds this share of its median is noisy
    background: int  # the class index left out of the foreground scores
    data_source: str  # the data as the command named it
    architectures: dict[str, dict[str, Any]]  # per label: the registry's paper, year, summary, blocks, ...
    speed: dict[str, Any]  # the Speed section (``review_speed.speed_section``); empty without one


@dataclass(frozen=True)
class ReviewInput:
    """Everything ``segbench.bench.report.review.write_review`` reads besides the run folders."""

    out: Path  # the sweep's folder: the runs, ``candidates/``, and ``report/`` written into it
    runs: list[ReviewRun]  # in plan order
    setup: ReviewSetup
    # The field's baseline (``segbench run --anchor``, segbench.bench.protocol.anchor): one per (fold, seed), its
    # ``arch`` the anchor's label; their design facts are in ``setup.architectures`` like the zoo's.
    anchors: list[ReviewRun] = field(default_factory=list)


# --- ensembles and flip TTA built from the sweep's runs (segbench.bench.protocol.candidates) --------------

CANDIDATES_DIR = "candidates"  # OUT/candidates/: one folder per candidate and run key, holding per-case files
CANDIDATES_FILE = "candidates.json"  # OUT/candidates/candidates.json: every CandidateRecord


@dataclass
class CandidateRecord:
    """A predictor built from trained runs without retraining: an architecture with flip TTA, or the ensemble
    of the top architectures (with or without TTA). Its per-case files are those of a run, one folder per
    (fold, seed) it was evaluated for; its cost was measured in one interleaved timing with ``reference``."""

    name: str  # its row's name in the report, e.g. "unet + TTA", "ensemble of 3 + TTA", "unet 5-fold ensemble"
    kind: str  # "tta", "ensemble", "ensemble+tta", or "folds" (one architecture's fold models, on the test split)
    members: list[str]  # the architectures (labels) whose runs it combines
    flips: list[str]
    folders: dict[str, str] = field(default_factory=dict)  # "<fold>,<seed>" ("-" for no fold) -> folder under OUT
    member_runs: dict[str, list[str]] = field(default_factory=dict)  # the same key -> the members' run folder names
    cost: dict[str, Any] = field(default_factory=dict)  # segbench.bench.measure.predictors.price_candidates
    reference: str = ""  # the single architecture timed in the same measurement (the best by mean)
    reference_cost: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # why it has no scores, when it failed
    split: str = "val"  # the split its per-case files score: "test" for a fold ensemble (no val case is held out by all)
    # The same key -> the evaluation's figures on that split (mIoU, hd95_fg, nsd_fg, ... as a run's metrics.json)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)

    @staticmethod
    def key(fold: int | None, seed: int) -> str:
        return f"{'-' if fold is None else fold},{seed}"

    @staticmethod
    def parse_key(key: str) -> tuple[int | None, int]:
        fold, seed = key.split(",")
        return (None if fold == "-" else int(fold)), int(seed)


def write_candidates(records: list[CandidateRecord], out: str | Path) -> None:
    (Path(out) / CANDIDATES_DIR).mkdir(parents=True, exist_ok=True)
    write_json({"candidates": [asdict(r) for r in records]}, Path(out) / CANDIDATES_DIR / CANDIDATES_FILE)


def read_candidates(out: str | Path) -> list[CandidateRecord]:
    """The records of ``OUT/candidates/candidates.json`` (none when the file is absent or unreadable)."""
    path = Path(out) / CANDIDATES_DIR / CANDIDATES_FILE
    try:
        values = json.loads(path.read_text())["candidates"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    names = {f.name for f in fields(CandidateRecord)}
    return [CandidateRecord(**{k: v for k, v in r.items() if k in names}) for r in values if isinstance(r, dict)]
