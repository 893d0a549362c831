"""A finished (or failed) run of the sweep as one flat row of the results table: what ran (backbone,
options, start, size), how it ended, and every figure its worker and training recorded (see
:mod:`segbench.bench.report.results` for the columns).
"""

from __future__ import annotations

import json
from pathlib import Path

from segbench.bench.report.results import class_key
from segbench.bench.protocol.sweep import PlannedRun
from segbench.bench.protocol.worker import PREVIEW_FILE, RESULT_FILE
from segbench.models.registry import ARCHITECTURES, model_options

__all__ = ["result_row", "backbone_label"]

# Options that change a backbone's size; shown next to the encoder's name.
_SHAPE_OPTIONS = ("base_width", "embed_dim", "embed_dims", "depths", "num_heads", "channels", "output_stride", "multi_grid")


def backbone_label(arch: str, options: dict) -> str:
    """``resnet18 (output_stride=8)``, ``swin_t (embed_dim=48, depths=[2, 2, 2, 2], channels=128)``,
    ``own encoder (base_width=16)``: the backbone a row actually ran, with what was changed."""
    defaults = model_options(arch)
    encoder = options.get("encoder", defaults.get("encoder")) or "own encoder"
    shape = [f"{k}={options[k]}" for k in _SHAPE_OPTIONS if k in options]
    return f"{encoder} ({', '.join(shape)})" if shape else str(encoder)


def _weights_note(pretrained: str | None) -> str:
    """What the backbone started from, for its table cell (nothing when from scratch)."""
    if pretrained is None:
        return ""
    return ", ImageNet weights" if pretrained == "imagenet" else f", weights {Path(pretrained).name}"


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
    """The flat results row of a run, from its ``bench.json`` (see ``segbench.bench.report.results``)."""
    entry = ARCHITECTURES[run.arch]
    cfg = run.config
    row: dict = {
        "arch": run.label, "seed": run.seed, "status": "failed", "error": "",
        "family": entry.family, "year": entry.year,
        "backbone": backbone_label(run.arch, cfg.model.options) + _weights_note(cfg.model.pretrained),
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
        for key in ("gflops", "latency_ms", "latency_q1_ms", "latency_q3_ms", "latency_noisy", "infer_peak_mb",
                    "memory_method"):
            row[key] = measure.get(key)
        row["timing_rounds"] = (measure.get("timing") or {}).get("latency", {}).get("rounds")
        row["measure_precision"] = measure.get("precision")
    if "train_peak_mb" in result:
        row["train_peak_mb"] = result["train_peak_mb"]
    metrics = result.get("metrics") or {}
    if metrics:
        row["train_time_s"] = metrics.get("train_time_s")
        row["train_ips"] = metrics.get("train_images_per_s")
        for key in ("data_time_s", "val_time_s", "val_metrics_time_s"):  # what the pipeline and metrics cost
            row[key] = metrics.get(key)
        row["best_iter"] = metrics.get("best_iteration")
        row["precision"] = metrics.get("precision")
        _split_figures("val", metrics.get("val"), row)
        _split_figures("test", metrics.get("test"), row)
    machine = result.get("machine") or {}
    for key in ("device", "device_name", "torch", "torch_threads"):
        row[key] = machine.get(key)
    row["has_preview"] = (run.run_dir / PREVIEW_FILE).is_file()
    return row
