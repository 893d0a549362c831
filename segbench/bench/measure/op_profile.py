"""Where a training step's time goes, by kind of operator (``segbench speed --breakdown``).

``torch.profiler`` records one step after a warm-up; each operator's *self* time (time in the op, not
in ops it calls) is binned into a category, so the shares add up to the step. On the CPU that is CPU
time; on CUDA the profiler also records the GPU's activity and the kernels' device time is what is
binned (the CPU time there is mostly launching kernels). The FLOP-doing
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


def _self_time(event, clock: str) -> float:
    """An event's self time in microseconds on ``clock`` ("cpu" or "cuda")."""
    if clock == "cpu":
        return event.self_cpu_time_total
    return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)


def profile_step(step: Callable[[], object], *, warmup: int = 1, top: int = 12, device: str = "cpu") -> dict:
    """Run ``step`` ``warmup`` times, then once under the profiler; time per category and top ops.
    On a CUDA ``device`` the GPU's activity is recorded too and its kernels' time is what is binned."""
    clock = "cuda" if torch.device(device).type == "cuda" else "cpu"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if clock == "cuda" else [])
    for _ in range(warmup):
        step()
    with profile(activities=activities, record_shapes=False) as prof:
        step()
        if clock == "cuda":
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::") or "Optimizer" in e.key]
    total_us = sum(_self_time(e, clock) for e in events) or 1.0
    categories: dict[str, float] = {}
    for event in events:
        category = _category(event.key)
        categories[category] = categories.get(category, 0.0) + _self_time(event, clock)
    ranked = sorted(events, key=lambda e: _self_time(e, clock), reverse=True)[:top]
    return {
        "clock": clock,
        "total_ms": total_us / 1e3,
        "categories": {k: v / total_us for k, v in sorted(categories.items(), key=lambda kv: -kv[1])},
        "top_ops": [
            {"op": e.key, "calls": e.count, "self_ms": _self_time(e, clock) / 1e3,
             "share": _self_time(e, clock) / total_us, "category": _category(e.key)}
            for e in ranked
        ],
    }


def format_breakdown(arch: str, result: dict) -> str:
    clock = {"cuda": "GPU kernel", "cpu": "CPU"}[result.get("clock", "cpu")]
    lines = [f"\n{arch}: training step profile ({result['total_ms']:.0f} ms of operator self {clock} time)"]
    lines.append("  by category: " + ", ".join(f"{k} {v:.0%}" for k, v in result["categories"].items() if v >= 0.01))
    for op in result["top_ops"]:
        lines.append(f"    {op['op']:<42} {op['calls']:>5} calls {op['self_ms']:>9.1f} ms  {op['share']:>4.0%}  ({op['category']})")
    return "\n".join(lines)
