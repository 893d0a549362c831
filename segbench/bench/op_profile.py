"""Where a training step's time goes, by kind of operator (``segbench speed --breakdown``).

``torch.profiler`` records one step after a warm-up; each operator's *self* CPU time (time in the op,
not in ops it calls) is binned into a category, so the shares add up to the step. The FLOP-doing
categories (convolution, matmul/attention) are what should dominate; time in the memory-bound ones
(BatchNorm, activations, interpolation, copies and layout conversions, concatenation, optimizer
update) is what keeps a model below the machine's matmul rate.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["CATEGORIES", "profile_step", "format_breakdown"]

# (category, substrings of aten op names), first match wins: "upsample_bilinear2d" must meet
# interpolation before "linear" (matmul), "addmm" matmul before "add" (elementwise).
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("convolution", ("convolution", "conv2d", "conv_depthwise", "mkldnn_conv", "slow_conv")),
    ("interpolation", ("upsample", "grid_sampler")),
    ("matmul/attention", ("addmm", "::mm", "bmm", "matmul", "::linear", "attention", "baddbmm")),
    ("loss", ("nll_loss", "log_softmax", "cross_entropy")),
    ("batchnorm", ("batch_norm",)),
    ("layernorm", ("layer_norm",)),
    ("activation", ("relu", "threshold", "gelu", "clamp_min", "hardtanh", "sigmoid", "softmax_backward", "_softmax")),
    ("pooling", ("pool", "max_unpool", "scatter")),
    ("copy/layout", ("copy_", "clone", "contiguous", "to_dense", "reorder", "_to_copy", "permute", "transpose")),
    ("concat/pad/slice", ("cat", "pad", "constant_pad", "slice", "narrow", "index", "roll")),
    ("optimizer", ("_foreach", "_fused_", "adam", "sgd", "lerp", "addcdiv", "addcmul")),
    ("elementwise", ("add", "mul", "div", "sub", "sum", "mean", "fill_", "zero_", "where", "dropout", "bernoulli")),
    ("allocation", ("empty", "zeros", "ones", "resize_", "as_strided", "view", "reshape", "expand")),
]


def _category(op_name: str) -> str:
    name = op_name.lower()
    for category, keys in CATEGORIES:
        if any(key in name for key in keys):
            return category
    return "other"


def profile_step(step: Callable[[], object], *, warmup: int = 1, top: int = 12) -> dict:
    """Run ``step`` ``warmup`` times, then once under the profiler; time per category and top ops."""
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        step()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::") or "Optimizer" in e.key]
    total_us = sum(e.self_cpu_time_total for e in events) or 1.0
    categories: dict[str, float] = {}
    for event in events:
        category = _category(event.key)
        categories[category] = categories.get(category, 0.0) + event.self_cpu_time_total
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {
        "total_ms": total_us / 1e3,
        "categories": {k: v / total_us for k, v in sorted(categories.items(), key=lambda kv: -kv[1])},
        "top_ops": [
            {"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3,
             "share": e.self_cpu_time_total / total_us, "category": _category(e.key)}
            for e in ranked
        ],
    }


def format_breakdown(arch: str, result: dict) -> str:
    lines = [f"\n{arch}: training step profile ({result['total_ms']:.0f} ms of operator self time)"]
    lines.append("  by category: " + ", ".join(f"{k} {v:.0%}" for k, v in result["categories"].items() if v >= 0.01))
    for op in result["top_ops"]:
        lines.append(f"    {op['op']:<42} {op['calls']:>5} calls {op['self_ms']:>9.1f} ms  {op['share']:>4.0%}  ({op['category']})")
    return "\n".join(lines)
