"""The sweep behind ``segbench run``: every chosen architecture x seed under one protocol, resumable.

Each run's configuration is resolved in full (profile + per-architecture options + user overrides)
and hashed together with the measurement settings; the run lives in ``OUT/<arch>-s<seed>-<hash>``. Running the same command again skips
finished runs, continues an interrupted one from its last checkpoint (the engine resumes), and retries
failed ones; changing any setting changes the hash, so results of different settings never mix.

Every run executes in a worker process (:mod:`segbench.bench.worker`): a crash or an out-of-memory kill
is recorded in that architecture's row and the sweep goes on.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from segbench.bench.profiles import REVIEW_ARCHS, Profile
from segbench.bench.results import class_key
from segbench.bench.worker import PREVIEW_FILE, RESULT_FILE, SPEC_FILE
from segbench.config import Config, apply_overrides, config_from_dict, config_to_dict
from segbench.data import BUILTIN_DATASETS
from segbench.registry import ARCHITECTURES, list_models, model_options

__all__ = ["PlannedRun", "plan_sweep", "run_sweep", "result_row", "config_hash", "backbone_label", "input_size"]


@dataclass(frozen=True)
class PlannedRun:
    arch: str
    seed: int
    config: Config
    measure: dict  # how the worker measures the model (input size, timed runs); part of the hash
    config_hash: str
    run_dir: Path

    @property
    def finished(self) -> bool:
        """A previous invocation completed this exact run (same configuration hash)."""
        path = self.run_dir / RESULT_FILE
        if not path.is_file():
            return False
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return result.get("status") == "ok" and result.get("hash") == self.config_hash


def config_hash(cfg: Config, measure: dict) -> str:
    """Ten hex digits of the SHA-256 of the resolved configuration and the measurement settings
    (sorted-key JSON): any change to either gives a new run folder."""
    text = json.dumps({"config": config_to_dict(cfg), "measure": measure}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _measure_settings(cfg: Config, profile: Profile) -> dict:
    return {
        "input_size": list(input_size(cfg, profile)),
        "latency_runs": profile.latency_runs,
        "warmup_runs": profile.warmup_runs,
        "throughput_batch": profile.throughput_batch,
        "throughput_runs": profile.throughput_runs,
    }


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
            # The headline metric of the review: mean foreground Dice per image/case.
            "best_metric": "dice_fg_per_case",
        },
    }
    if profile.resize_inputs:
        values["data"]["resize"] = size
    else:
        values["data"]["augment"] = {"crop_size": size}
        values["eval"] = {"mode": "slide", "window": size}
    return values


def plan_sweep(
    *,
    data: str,
    profile: Profile,
    out: str | Path,
    archs: list[str] | None = None,
    seeds: int | None = None,
    iterations: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    pretrained: dict[str, str] | None = None,
) -> list[PlannedRun]:
    """Resolve every (architecture, seed) configuration. Raises ``KeyError``/``ValueError`` (with the
    valid choices) for unknown architectures, bad options or bad overrides, before anything runs.

    ``pretrained`` maps an architecture to a backbone-weights file (``model.pretrained``)."""
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
    iterations = profile.iterations if iterations is None else iterations
    if iterations < 1:
        raise ValueError(f"--iterations must be >= 1, got {iterations}")
    out = Path(out)
    base = _base_values(profile, data, iterations)
    plan = []
    for arch in archs:
        options = dict(profile.arch_options.get(arch, {}))
        valid = model_options(arch)
        bad = [k for k in options if k not in valid]
        if bad:
            raise ValueError(f"profile {profile.name!r} gives {arch} unknown option(s) {bad}; valid: {', '.join(valid)}")
        for seed in range(seeds):
            values = json.loads(json.dumps(base))
            values["model"] = {"arch": arch, "options": options}
            if pretrained and arch in pretrained:
                values["model"]["pretrained"] = pretrained[arch]
            values["train"]["seed"] = seed
            values = apply_overrides(values, [*profile.overrides, *overrides])
            cfg = config_from_dict(values)
            measure = _measure_settings(cfg, profile)
            digest = config_hash(cfg, measure)
            plan.append(PlannedRun(arch, seed, cfg, measure, digest, out / f"{arch}-s{seed}-{digest}"))
    return plan


def input_size(cfg: Config, profile: Profile) -> tuple[int, int]:
    """The network input the run trains on (an override of ``data.resize`` or the crop wins over the
    profile's), which is also the size FLOPs and latency are measured at."""
    size = cfg.data.resize if profile.resize_inputs else cfg.data.augment.crop_size
    return tuple(size or profile.input_size)


def _write_spec(run: PlannedRun, profile: Profile) -> None:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "hash": run.config_hash,
        "config": config_to_dict(run.config),
        "measure": run.measure,
        "preview_images": profile.preview_images,
    }
    (run.run_dir / SPEC_FILE).write_text(json.dumps(spec, indent=1))


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


def _die_with_parent() -> None:
    """In the worker, before exec (Linux): SIGTERM when the sweep process dies, so a killed sweep
    leaves no orphan writing into a run folder that the next invocation resumes."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _execute(run: PlannedRun, progress: bool) -> dict:
    """Run the worker; its ``bench.json``, or a failure record when it died without writing one."""
    result_path = run.run_dir / RESULT_FILE
    result_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "segbench.bench.worker", str(run.run_dir)]
    if not progress:
        command.append("--no-progress")
    process = subprocess.Popen(command, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        # Ctrl-C reaches the worker too (same process group); let it stop, then stop the sweep.
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    if result_path.is_file():
        return json.loads(result_path.read_text())
    if code < 0:
        why = " (the system's out-of-memory killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        error = f"worker killed by {_signal_name(-code)}{why}"
    else:
        error = f"worker exited with status {code} without writing {RESULT_FILE}"
    return {"hash": run.config_hash, "status": "failed", "error": error}


def run_sweep(
    plan: list[PlannedRun], profile: Profile, *, progress: bool = True, say: Callable[[str], None] = print
) -> dict[str, int]:
    """Run every planned run not finished before; returns counts: ``skipped``, ``ran``, ``failed``."""
    counts = {"skipped": 0, "ran": 0, "failed": 0}
    for k, run in enumerate(plan, start=1):
        label = f"[{k}/{len(plan)}] {run.arch} seed {run.seed} ({run.run_dir.name})"
        if run.finished:
            counts["skipped"] += 1
            say(f"{label}: finished earlier, reusing its results")
            continue
        say(f"{label}: {'resuming' if (run.run_dir / 'last.pt').is_file() else 'starting'}")
        _write_spec(run, profile)
        started = time.perf_counter()
        result = _execute(run, progress)
        elapsed = time.perf_counter() - started
        counts["ran"] += 1
        if result.get("status") == "ok":
            value = ((result.get("metrics") or {}).get("val") or {}).get("dice_fg_per_case")
            shown = f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
            say(f"{label}: done in {elapsed:.0f} s, val Dice {shown}")
        else:
            counts["failed"] += 1
            if not (run.run_dir / RESULT_FILE).is_file():  # the worker died before writing it
                run.run_dir.mkdir(parents=True, exist_ok=True)
                (run.run_dir / RESULT_FILE).write_text(json.dumps(result, indent=1))
            say(f"{label}: FAILED after {elapsed:.0f} s: {result.get('error')}")
    return counts


# --- rows ----------------------------------------------------------------------------------------

# Options that change a backbone's size; shown next to the encoder's name.
_SHAPE_OPTIONS = ("base_width", "embed_dim", "embed_dims", "depths", "num_heads", "channels", "output_stride", "multi_grid")


def backbone_label(arch: str, options: dict) -> str:
    """``resnet18 (output_stride=8)``, ``swin_t (embed_dim=48, depths=[2, 2, 2, 2], channels=128)``,
    ``own encoder (base_width=16)``: the backbone a row actually ran, with what was changed."""
    defaults = model_options(arch)
    encoder = options.get("encoder", defaults.get("encoder")) or "own encoder"
    shape = [f"{k}={options[k]}" for k in _SHAPE_OPTIONS if k in options]
    return f"{encoder} ({', '.join(shape)})" if shape else str(encoder)


def _split_figures(prefix: str, metrics: dict | None, row: dict) -> None:
    if not metrics:
        return
    row[f"{prefix}_dice"] = metrics.get("dice_fg_per_case")
    row[f"{prefix}_miou"] = metrics.get("mIoU")
    row[f"{prefix}_hd95"] = metrics.get("hd95_fg")
    row[f"{prefix}_dice_dataset"] = metrics.get("mDice_fg")
    row[f"{prefix}_aacc"] = metrics.get("aAcc")
    for name, value in (metrics.get("dice_per_case") or {}).items():
        row[class_key(prefix, "dice", name)] = value
    for name, value in ((metrics.get("per_class") or {}).get("IoU") or {}).items():
        row[class_key(prefix, "iou", name)] = value


def result_row(run: PlannedRun) -> dict:
    """The flat results row of a run, from its ``bench.json`` (see ``segbench.bench.results``)."""
    entry = ARCHITECTURES[run.arch]
    cfg = run.config
    row: dict = {
        "arch": run.arch, "seed": run.seed, "status": "failed", "error": "",
        "family": entry.family, "year": entry.year,
        "backbone": backbone_label(run.arch, cfg.model.options),
        "model_options": json.dumps(cfg.model.options, sort_keys=True),
        "pretrained": cfg.model.pretrained or "none (from scratch)",
        "input_size": "x".join(map(str, cfg.data.resize or cfg.data.augment.crop_size or ("native",))),
        "iterations": cfg.train.iterations, "batch_size": cfg.train.batch_size,
        "config_hash": run.config_hash, "run_dir": str(run.run_dir),
    }
    path = run.run_dir / RESULT_FILE
    result = json.loads(path.read_text()) if path.is_file() else {"error": "never ran"}
    row["status"] = result.get("status", "failed")
    row["error"] = result.get("error", "") if row["status"] != "ok" else ""
    measure = result.get("measure") or {}
    if measure:
        row["params"] = measure["params"]
        row["params_m"] = measure["params"] / 1e6
        for key in ("gflops", "latency_ms", "latency_p90_ms", "throughput_ips", "infer_peak_mb"):
            row[key] = measure.get(key)
        row["latency_runs"] = measure.get("latency_runs")
        row["memory_method"] = measure.get("memory_method")
    if "train_peak_mb" in result:
        row["train_peak_mb"] = result["train_peak_mb"]
    metrics = result.get("metrics") or {}
    if metrics:
        row["train_time_s"] = metrics.get("train_time_s")
        row["train_ips"] = metrics.get("train_images_per_s")
        row["best_iter"] = metrics.get("best_iteration")
        row["precision"] = metrics.get("precision")
        _split_figures("val", metrics.get("val"), row)
        _split_figures("test", metrics.get("test"), row)
    machine = result.get("machine") or {}
    for key in ("device", "device_name", "torch", "torch_threads"):
        row[key] = machine.get(key)
    row["has_preview"] = (run.run_dir / PREVIEW_FILE).is_file()
    return row

