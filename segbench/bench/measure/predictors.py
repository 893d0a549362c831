"""The price of a predictor that is more than one forward pass: flip TTA, an ensemble, both.

Measured, never multiplied: each candidate (its members and its ``InferenceSettings``) is run as
``segbench predict`` and evaluation run it (``inference.predict_scores`` on every member's
``inference_network``) and timed by the one harness (:func:`timing.time_interleaved`), all candidates
in one interleaved measurement, so a slow spell on a shared machine hits them alike. Batch-1 latency
(median, quartiles), the inference memory peak of one call (:func:`cost.allocated_peak`), FLOPs of one
call (:func:`flops.count_flops_of`) and the forward passes one call makes (counted by forward hooks,
a number, not a time): k members with f flips make k * 2^f.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from segbench.bench.measure.cost import _sample, allocated_peak
from segbench.bench.measure.flops import count_flops_of
from segbench.bench.measure.load import watch_load
from segbench.bench.measure.timing import Timing, time_interleaved
from segbench.engine.device import Precision
from segbench.engine.inference import InferenceSettings, inference_network, predict_scores

__all__ = ["Candidate", "count_forward_passes", "price_candidates", "price_exported"]


@dataclass
class Candidate:
    """A predictor to price: its member networks (trained, any mode) and how it infers (flips, window)."""

    members: list[nn.Module]
    settings: InferenceSettings


def count_forward_passes(members: list[nn.Module], call: Callable[[], object]) -> int:
    """How many times ``call`` runs the members' forward (each member's top-level module counts once per call)."""
    calls = [0]

    def hook(*_):
        calls[0] += 1

    handles = [m.register_forward_hook(hook) for m in members]
    try:
        call()
    finally:
        for handle in handles:
            handle.remove()
    return calls[0]


def _predictor(members: list[nn.Module], settings: InferenceSettings, x: torch.Tensor,
               precision: Precision) -> Callable[[], None]:
    def infer() -> None:
        with torch.inference_mode(), precision.autocast():
            predict_scores(members, x, settings)

    return infer


def price_candidates(candidates: dict[str, Candidate], *, in_channels: int, size: tuple[int, int],
                     device: torch.device | str = "cpu", precision: Precision | None = None, rounds: int = 20,
                     max_warmup: int = 10) -> dict[str, dict]:
    """name -> latency_ms (batch 1, median) with its quartiles and noise flag, infer_peak_mb, gflops,
    forward_passes, and the machine's load during the timing; every candidate timed in one interleaved run."""
    device = torch.device(device)
    precision = precision or Precision(None, device.type)
    x = _sample(1, in_channels, size, device)
    calls, facts = {}, {}
    for name, candidate in candidates.items():
        networks = [inference_network(m.to(device).eval(), x, precision).model for m in candidate.members]
        call = _predictor(networks, candidate.settings, x, precision)
        passes = count_forward_passes(networks, call)
        with allocated_peak(device) as memory:
            call()
        with torch.inference_mode(), precision.autocast():
            flops = count_flops_of(lambda: predict_scores(networks, x, candidate.settings))
        calls[name] = call
        facts[name] = {"forward_passes": passes, "members": len(networks), "flips": list(candidate.settings.flips),
                       "gflops": flops / 1e9, "infer_peak_mb": memory.megabytes, "memory_method": memory.method}
    with watch_load() as load:
        timings = time_interleaved(calls, rounds=rounds, max_warmup=max_warmup, device=device)
    machine = load.load.record()
    out = {}
    for name, timing in timings.items():
        latency = timing.summary(1e3)
        out[name] = {**facts[name], "latency_ms": latency["median"], "latency_q1_ms": latency["q1"],
                     "latency_q3_ms": latency["q3"], "latency_noisy": latency["noisy"], "timing": latency,
                     "measure_precision": precision.name, **machine}
    return out


def onnx_latency(model: nn.Module, *, in_channels: int, size: tuple[int, int], rounds: int = 20,
                 max_warmup: int = 10) -> dict:
    """``model`` exported to ONNX (``segbench export``'s code, checked against PyTorch) and run by ONNX Runtime
    on the CPU at this process's torch thread count, as ``segbench predict --engine onnx`` runs it: its batch-1
    latency as ``onnx_latency_ms`` (median) with its quartiles and noise flag, timed by the one harness; or,
    when it cannot be exported or run, ``onnx_latency_error``: why, in one line (the figure stays empty)."""
    import copy
    import tempfile
    from pathlib import Path

    from segbench.export.onnx import export_onnx, load_onnx_model

    model = copy.deepcopy(model).cpu().eval()  # ONNX Runtime runs on the CPU here, whatever device trains
    try:
        with tempfile.TemporaryDirectory(prefix="segbench-onnx-") as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(model, path, input_size=size, in_channels=in_channels)
            costs, _ = price_exported({"onnx": load_onnx_model(path, threads=torch.get_num_threads())},
                                      in_channels=in_channels, size=size, rounds=rounds, max_warmup=max_warmup)
    except (ImportError, RuntimeError, ValueError) as err:
        return {"onnx_latency_error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    cost = costs["onnx"]
    return {f"onnx_{key}": cost[key] for key in ("latency_ms", "latency_q1_ms", "latency_q3_ms", "latency_noisy")}


def price_exported(models: dict[str, nn.Module], *, in_channels: int, size: tuple[int, int], rounds: int = 20,
                   max_warmup: int = 10) -> tuple[dict[str, dict], dict[str, Timing]]:
    """Exported models run by ONNX Runtime on the CPU (``onnx_runtime.OnnxModel``: fp32, int8), as ``segbench
    predict --engine onnx`` runs them: name -> latency_ms (batch 1, median) with its quartiles and noise flag
    and the machine's load, all timed in one interleaved run; and the timings themselves (their rounds pair
    up: ``speed.paired_ratio``). No FLOPs or memory: torch cannot count what runs outside it."""
    x = _sample(1, in_channels, size, torch.device("cpu"))
    calls = {name: (lambda model=model: model(x)) for name, model in models.items()}
    with watch_load() as load:
        timings = time_interleaved(calls, rounds=rounds, max_warmup=max_warmup, device="cpu")
    machine = load.load.record()
    costs = {}
    for name, timing in timings.items():
        latency = timing.summary(1e3)
        costs[name] = {"latency_ms": latency["median"], "latency_q1_ms": latency["q1"], "latency_q3_ms": latency["q3"],
                       "latency_noisy": latency["noisy"], "timing": latency, "forward_passes": 1,
                       "measure_precision": "onnxruntime", **machine}
    return costs, timings
