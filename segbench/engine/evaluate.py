"""Evaluate a model on a split: inference as ``EvalConfig`` says, then every metric of ``metrics.py``.

Under ``torchrun`` the processes share the split case by case (case k goes to process k mod N, so a
volume's slices stay together) and merge their confusion matrices and per-case rows, in the split's
order, into the same figures one process computes alone.

``evaluate_run(run_dir, split)`` does it for a finished run's best checkpoint and writes
``eval_<split>.json`` next to it.
"""

from __future__ import annotations

import errno
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from segbench.config import ConfigError, EvalConfig, apply_overrides, config_from_dict, config_to_dict
from segbench.engine import run_folder
from segbench.jsonio import json_safe, write_json
from segbench.engine.checkpoint import DataInfo, load_run_model
from segbench.data.dataset import SliceDataset
from segbench.engine.distributed import DistInfo
from segbench.engine.device import Precision, inference_precision, resolve_device
from segbench.engine.hardware import loader_workers
from segbench.engine.inference import InferenceSettings, predict_scores, tta_flips
from segbench.engine.metrics import CaseScores, SegmentationMetrics, write_per_case_csv
from segbench.run_files import WRITE_ERRNOS, DiskFull, eval_file, eval_per_case_file

__all__ = ["inference_settings", "merge_shards", "evaluate", "evaluate_run", "EvaluationNotSaved", "json_safe",
           "write_json"]


class EvaluationNotSaved(OSError):
    """``evaluate_run`` measured the figures (``result``) but could not write them into the run folder."""

    def __init__(self, path: Path, cause: OSError, result: dict):
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.result = result
        full = cause.errno in (errno.ENOSPC, errno.EDQUOT)
        self.reason = str(DiskFull(cause.filename or path)) if full else \
            f"cannot write {cause.filename or path}: {cause.strerror or cause}"

    def __str__(self) -> str:
        return (f"{self.reason}, so {self.filename} was not saved (the figures were measured); make the run folder "
                "writable (or free space on its disk) and run the same command again to save them")


def inference_settings(cfg: EvalConfig) -> InferenceSettings:
    return InferenceSettings(
        mode=cfg.mode,
        window=tuple(cfg.window) if cfg.window else None,
        overlap=cfg.overlap,
        blend=cfg.blend,
        flips=tuple(cfg.flips),
        batch_size=cfg.batch_size,
    )


def _as_list(items: list) -> list:
    return items


def _same_size_runs(items: list[dict]) -> list[list[dict]]:
    # Consecutive items of one size form a batch; sizes may differ between images of a split.
    runs: list[list[dict]] = []
    for item in items:
        if runs and runs[-1][0]["image"].shape == item["image"].shape:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def case_ordinals(dataset: Dataset) -> list[int]:
    """For each item, the position of its case among the split's cases (in order of first appearance).

    segbench's own datasets know their items' cases; another dataset is read once to learn them."""
    if isinstance(dataset, SliceDataset):
        keys = [case for case, _ in dataset.items]
    else:
        keys = [str(dataset[i]["case"]) for i in range(len(dataset))]
    ordinal: dict = {}
    return [ordinal.setdefault(key, len(ordinal)) for key in keys]


def merge_shards(
    shards: list[tuple[list[int], torch.Tensor, list[CaseScores]]],
) -> tuple[torch.Tensor, list[CaseScores]]:
    """Every process's (case ordinals, confusion matrix, per-case records) -> the summed matrix and all
    records in the split's case order: what one process evaluating the whole split holds."""
    cm = sum(shard[1] for shard in shards)
    numbered = [(ordinal, record) for ordinals, _, records in shards for ordinal, record in zip(ordinals, records)]
    return cm, [record for _, record in sorted(numbered, key=lambda pair: pair[0])]


def _merge_shards(metrics: SegmentationMetrics, mine: list[int], info: DistInfo) -> None:
    """Fold every process's confusion matrix and per-case records into ``metrics``."""
    metrics.finish()
    shards = [None] * info.world_size
    dist.all_gather_object(shards, (mine, metrics.cm, metrics.cases))
    metrics.cm, metrics.cases = merge_shards(shards)


@torch.no_grad()
def evaluate(
    model: nn.Module | Sequence[nn.Module],
    dataset: Dataset,
    info: DataInfo,
    cfg: EvalConfig,
    device: torch.device | str = "cpu",
    precision: Precision | None = None,
    *,
    memory_format: torch.memory_format = torch.contiguous_format,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "eval",
    timings: dict[str, float] | None = None,
    dist_info: DistInfo | None = None,
    per_case: list[dict] | None = None,
    per_slice: list[dict] | None = None,
) -> dict:
    """Every metric of ``SegmentationMetrics.compute`` for ``model`` on ``dataset`` (in dataset order).

    ``model`` may be the members of an ensemble (a sequence of networks): their softmax probabilities are
    averaged (``inference.predict_scores``), as is flip TTA when ``cfg.flips`` names flips.

    ``dist_info`` (data-parallel runs): every process calls this with the same model and gets the same
    figures, each having evaluated its share of the cases.

    ``timings``, when given, gains the pass's seconds: ``eval_s`` (all of it), ``data_s`` (waiting for
    the loader) and ``metrics_s`` (in ``SegmentationMetrics``: update and compute), so a caller can tell
    what the input pipeline and the metrics add to the inference. ``per_case``, when given, gains one row
    per (case, foreground class) (``SegmentationMetrics.per_case_rows``; the same on every process);
    ``per_slice`` one per (volume slice, foreground class) (``per_slice_rows``).
    """
    device = torch.device(device)
    precision = precision or Precision(None, device.type)
    settings = inference_settings(cfg)
    metrics = SegmentationMetrics(
        info.num_classes, info.ignore_index, info.class_names, cfg.background, cfg.hd95, cfg.nsd_tolerance
    )
    sharded = dist_info is not None and dist_info.enabled
    if sharded:
        ordinals = case_ordinals(dataset)
        items = [i for i, case in enumerate(ordinals) if case % dist_info.world_size == dist_info.rank]
        mine = sorted({ordinals[i] for i in items})
        dataset = Subset(dataset, items)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=False,
        collate_fn=_as_list,
        num_workers=num_workers,
        generator=torch.Generator(),  # leaves the global RNG alone (resumed runs stay exact)
    )
    members = [model] if isinstance(model, nn.Module) else list(model)
    was_training = [member.training for member in members]
    for member in members:
        member.eval()
    start = tick = time.perf_counter()
    metrics_s = data_s = 0.0
    for items in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        data_s += time.perf_counter() - tick
        for run in _same_size_runs(items):
            images = torch.stack([item["image"] for item in run]).to(device).contiguous(memory_format=memory_format)
            with precision.autocast():
                labels = predict_scores(members, images, settings).argmax(1).cpu()  # .cpu() waits for the device
            metrics_start = time.perf_counter()
            metrics.update(
                labels,
                torch.stack([item["mask"] for item in run]),
                [str(item["case"]) for item in run],
                [int(item["index"]) for item in run],
                [item.get("spacing") for item in run],  # volumes: mm; 2D images have none (pixels)
            )
            metrics_s += time.perf_counter() - metrics_start
        tick = time.perf_counter()
    for member, training in zip(members, was_training):
        member.train(training)
    tick = time.perf_counter()
    if sharded:
        _merge_shards(metrics, mine, dist_info)
    values = metrics.compute()
    if per_case is not None:  # one row per (case, foreground class): SegmentationMetrics.per_case_rows
        per_case.extend(metrics.per_case_rows())
    if per_slice is not None:  # and per (volume slice, foreground class): per_slice_rows
        per_slice.extend(metrics.per_slice_rows())
    if timings is not None:
        end = time.perf_counter()
        timings["eval_s"] = timings.get("eval_s", 0.0) + end - start
        timings["metrics_s"] = timings.get("metrics_s", 0.0) + metrics_s + end - tick
        timings["data_s"] = timings.get("data_s", 0.0) + data_s
    return values


def evaluate_run(
    run_dir: str | Path, split: str = "val", *, which: str = "best", overrides: list[str] | tuple[str, ...] = (),
    tta: bool = False, progress: bool = False,
) -> dict:
    """Metrics of a run's ``which`` checkpoint on ``split``; also written to ``run_dir/eval_<split>.json``.

    ``overrides`` (``eval.KEY=VALUE``) change how it is evaluated, e.g. ``eval.mode=slide`` or
    ``eval.flips=[horizontal]``; the rest of the configuration is the run's own. ``tta``: flip TTA with the
    flips valid for the data (``inference.tta_flips``) unless ``eval.flips`` names some. A run folder that
    cannot be written (read-only, full) raises ``EvaluationNotSaved``, which holds the figures.
    """
    from segbench.data import load_data

    run_dir = Path(run_dir)
    model, cfg, info = load_run_model(run_dir, which)
    if overrides:
        wrong = [o for o in overrides if not o.strip().startswith("eval.")]
        if wrong:
            raise ConfigError(f"only eval.* settings can change after training, got {', '.join(wrong)}")
        cfg = config_from_dict(apply_overrides(config_to_dict(cfg), list(overrides)))
    if tta and not cfg.eval.flips:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, flips=tta_flips(info.volumetric)))
    data = load_data(cfg.data)
    if split not in data.splits:
        raise ValueError(f"the data has no {split!r} split; it has: {', '.join(data.splits)}")
    from segbench.data.pipeline import split_record

    for warning in run_folder.compare_split_record(run_dir, split_record(data), split):
        print(warning, file=sys.stderr)
    device = resolve_device("auto")  # where the run was trained may not be here
    precision = inference_precision(cfg.train.amp, device)  # the run may have trained elsewhere
    model.to(device)
    rows: list[dict] = []
    metrics = evaluate(model, data.splits[split], info, cfg.eval, device, precision, progress=progress, desc=split,
                       num_workers=loader_workers(cfg.train.num_workers, device), per_case=rows)
    result = {"split": split, "checkpoint": which, "eval": config_to_dict(cfg)["eval"], **metrics}
    try:  # listed before written; starting over deletes them
        run_folder.record(run_dir, eval_file(split), eval_per_case_file(split))
        write_json(result, run_dir / eval_file(split))
        write_per_case_csv(run_dir / eval_per_case_file(split), rows)
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:  # a read-only or full run folder: the figures exist, not the file
            raise
        raise EvaluationNotSaved(run_dir / eval_file(split), err, result) from err
    return result
