"""A finished (or failed) run of the sweep as its ``RunRecord``: what ran (backbone, options, start,
size), how it ended, and every figure its worker and training recorded (``figures_of``).
"""

from __future__ import annotations

import json
from pathlib import Path

from segbench.bench.protocol.record import PREVIEW_FILE, RunRecord, WorkerResult, figures_of
from segbench.bench.protocol.sweep import PlannedRun
from segbench.models.architectures.crf import crf_kind
from segbench.models.registry import ARCHITECTURES, model_options

__all__ = ["run_record", "backbone_label"]

# Options that change a backbone's size; shown next to the encoder's name.
_SHAPE_OPTIONS = ("base_width", "embed_dim", "embed_dims", "depths", "num_heads", "channels", "output_stride", "multi_grid")


def backbone_label(arch: str, options: dict) -> str:
    """``resnet18 (output_stride=8)``, ``swin_t (embed_dim=48, depths=[2, 2, 2, 2], channels=128)``,
    ``own encoder (base_width=16)``: the backbone a row actually ran, with what was changed."""
    defaults = model_options(arch)
    encoder = options.get("encoder", defaults.get("encoder")) or "own encoder"
    shape = [f"{k}={options[k]}" for k in _SHAPE_OPTIONS if k in options]
    return f"{encoder} ({', '.join(shape)})" if shape else str(encoder)


def crf_note(options: dict) -> str:
    """The CRF that post-processed a DeepLab v1/v2 row (``, dense CRF``), for its backbone cell; nothing
    without one."""
    kind = crf_kind(options.get("crf", "none"))
    return "" if kind == "none" else f", {kind} CRF"


def _weights_note(pretrained: str | None) -> str:
    """What the backbone started from, for its table cell (nothing when from scratch)."""
    if pretrained is None:
        return ""
    return ", ImageNet weights" if pretrained == "imagenet" else f", weights {Path(pretrained).name}"


def run_record(run: PlannedRun) -> RunRecord:
    """The record of a planned run: its identity from the plan and the registry, its figures from its
    ``bench.json`` (a run that never wrote one is a failed row saying so)."""
    entry = ARCHITECTURES[run.arch]
    cfg = run.config
    result = WorkerResult.read(run.run_dir) or WorkerResult(hash=run.config_hash, error="never ran")
    result.budget = result.budget or dict(run.budget)  # a run that never ran was still given its budget
    return RunRecord(
        arch=run.label, seed=run.seed, fold=run.fold, status=result.status, error=result.error if not result.ok else "",
        recipe=entry.recipe, year=entry.year,
        backbone=backbone_label(run.arch, cfg.model.options) + crf_note(cfg.model.options)
        + _weights_note(cfg.model.pretrained),
        model_options=json.dumps(cfg.model.options, sort_keys=True),
        pretrained=cfg.model.pretrained or "none (from scratch)",
        input_size="x".join(map(str, cfg.data.resize or cfg.data.augment.crop_size or ("native",))),
        iterations=cfg.train.iterations, batch_size=cfg.train.batch_size,
        config_hash=run.config_hash, run_dir=str(run.run_dir),
        has_preview=(run.run_dir / PREVIEW_FILE).is_file(),
        figures=figures_of(result),
    )
