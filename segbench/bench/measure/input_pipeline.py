"""How much of an epoch is *not* the model: data loading and augmentation during training, and data
loading plus metric accumulation (confusion matrix, per-case Dice and HD95) during validation.

Every batch is timed in three parts inside the same loop, as the engine runs it: waiting for the
``DataLoader`` (reading, decoding, augmenting, collating), model compute (a training step, or
``predict_scores``), and ``SegmentationMetrics.update`` (validation; ``compute()`` at the end counts
too). Timing the parts of each batch back to back, rather than a whole epoch against a separate
compute-only epoch, keeps a busy machine's slow spells from landing on one side only.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Subset

if TYPE_CHECKING:
    from segbench.bench.measure.speed import SpeedSettings

__all__ = ["pipeline_overhead", "format_pipeline"]


def pipeline_overhead(settings: "SpeedSettings", arch: str, *, source: str = "brain-mri", max_batches: int = 20) -> dict:
    """Data and metric shares of a train epoch and a validation pass of ``arch`` on ``source``.

    Training uses random crops of ``settings.size`` (the engine's augmentation); at most
    ``max_batches`` batches of each split are timed, after one untimed batch.
    """
    from segbench.bench.measure.speed import train_step
    from segbench.bench.measure.timing import synchronize
    from segbench.engine.device import resolve_precision
    from segbench.config import EvalConfig
    from segbench.data import AugmentConfig, DataConfig, load_data
    from segbench.engine.checkpoint import DataInfo
    from segbench.engine.evaluate import evaluate
    from segbench.engine.inference import predict_scores
    from segbench.models.registry import build_model, model_recipe

    device = torch.device(settings.device)
    data = load_data(DataConfig(source=source, augment=AugmentConfig(crop_size=settings.size)))
    model = build_model(arch, data.num_classes, data.in_channels, **settings.options.get(arch, {})).to(device)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    result = {"arch": arch, "source": source, "batch": settings.batch, "size": list(settings.size)}

    precision = resolve_precision(settings.amp, device)
    step = train_step(model, model_recipe(model, arch), settings, precision)
    loader = DataLoader(data.splits["train"], batch_size=settings.batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    parts = {"data_s": 0.0, "compute_s": 0.0}
    batches = iter(loader)
    for index in itertools.count():
        tick = time.perf_counter()
        batch = next(batches, None)
        if batch is None or index > max_batches:
            break
        images = batch["image"].to(device).contiguous(memory_format=memory_format)
        masks = batch["mask"].to(device)
        synchronize(device)  # the copy to the device belongs to loading
        loaded = time.perf_counter()
        step(images, masks)
        synchronize(device)  # CUDA runs asynchronously: without this its time would land in the next "data"
        if index:  # the first batch warms allocator and kernels up
            parts["data_s"] += loaded - tick
            parts["compute_s"] += time.perf_counter() - loaded
    result["train"] = {"batches": max(index - 1, 0), **parts, "overhead": parts["data_s"] / sum(parts.values())}

    # Validation through the engine's one evaluation loop, on the first max_batches batches of val.
    eval_cfg = EvalConfig(batch_size=settings.batch)
    val = data.splits["val"]
    subset = Subset(val, range(min(len(val), max_batches * settings.batch)))
    with precision.autocast(), torch.inference_mode():
        predict_scores(model, val[0]["image"][None].to(device))  # warm-up, untimed
    timings: dict[str, float] = {}
    evaluate(model, subset, DataInfo.of(data), eval_cfg, device, precision, memory_format=memory_format,
             timings=timings)
    parts = {"data_s": timings["data_s"], "metrics_s": timings["metrics_s"],
             "compute_s": timings["eval_s"] - timings["data_s"] - timings["metrics_s"]}
    images_seen = len(subset)
    total = sum(parts.values())
    result["val"] = {"images": images_seen, **parts, "overhead": (parts["data_s"] + parts["metrics_s"]) / total,
                     "metrics_share": parts["metrics_s"] / total}
    return result


def format_pipeline(result: dict) -> str:
    train, val = result["train"], result["val"]
    return "\n".join([
        f"\ninput pipeline + metrics ({result['arch']} on {result['source']}, batch {result['batch']}, "
        f"{result['size'][0]}x{result['size'][1]} crops):",
        f"  train: {train['batches']} batches, {train['data_s']:.2f} s waiting for the DataLoader (read + augment) vs "
        f"{train['compute_s']:.2f} s training steps: {train['overhead']:.0%} of the epoch is input pipeline",
        f"  val:   {val['images']} images, {val['data_s']:.2f} s DataLoader + {val['metrics_s']:.2f} s SegmentationMetrics "
        f"vs {val['compute_s']:.2f} s inference: {val['overhead']:.0%} overhead ({val['metrics_share']:.0%} metrics)",
    ])
