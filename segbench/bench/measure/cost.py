"""What the review measures on each architecture besides accuracy: size, compute, speed, memory, and
the machine it ran on.

Every number says how it was obtained, because each has a trap:

- FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (``segbench.bench.measure.flops``, shared with
  ``segbench models``) on one eval-mode forward pass at batch 1 and the profile's input size. It counts matrix multiplications and convolutions (2 FLOPs per multiply-add,
  so twice the "MACs" some papers call FLOPs) and ignores element-wise work (BN, activations, resizing).
- Latency (batch 1) is timed by the one harness, :mod:`segbench.bench.measure.timing` (warm-up until
  stable, median with its interquartile range, re-measured and then marked when noisy), in eval mode
  under ``torch.inference_mode``, at the precision and in the memory format the run trains in, on the
  network ``segbench predict`` runs (``segbench.engine.inference.inference_network``: BatchNorms folded,
  ``batchnorm_folded`` says how many; conv/linear weights stored in the autocast dtype, ``inference_weights``).
  Throughput is not measured here: it is the Speed section's batch inference time
  (:mod:`segbench.bench.protocol.review_speed`), so the table and the section show one measurement, not two
  that a shared machine's drift between them would make disagree.
- Inference memory (:func:`allocated_peak`): the peak of the bytes held by tensors during one forward
  pass, over those held at its start (the weights, the input). On CUDA ``torch.cuda.max_memory_allocated``
  after ``reset_peak_memory_stats`` (tensors only, not the allocator's cache). On CPU torch's allocator
  keeps no peak, so the forward runs once under ``torch.profiler`` with ``profile_memory``: every
  allocation and free through the CPU allocator is an event, and the running sum of their sizes in time
  order has a maximum, the same quantity as on CUDA. It is deterministic (the same model and input
  allocate the same sequence) and does not depend on which pages the process already holds; memory a
  library allocates outside torch's allocator (oneDNN's own scratch space) is not in it.
- Training memory (:func:`peak_memory`): on CUDA the same; on CPU profiling a whole training run would
  cost too much, so it is the growth of the process's peak resident set (``VmHWM`` in
  ``/proc/self/status``, reset by writing 5 to ``/proc/self/clear_refs``) over its resident set just
  before the training. That counts everything the code touched, and it is only meaningful in a fresh
  process: memory freed earlier stays in the allocator's pools and hides the next use, which the sweep
  avoids by training each run in its own worker process. Where the peak cannot be reset, the lifetime
  peak is used and the method string says so.
- A figure that was not measured is None, never 0, and its method string says why: a forward pass or
  a training run always allocates something, so a zero means the method could not see it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import re
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from segbench.bench.measure.load import watch_load
from segbench.bench.measure.timing import time_interleaved
from segbench.engine.device import Precision
from segbench.bench.measure.flops import count_flops, count_parameters
from segbench.engine.inference import inference_network

__all__ = [
    "inference_fn",
    "measure_inference",
    "PeakMemory",
    "peak_memory",
    "allocated_peak",
    "machine_info",
]


def _sample(batch: int, in_channels: int, size: tuple[int, int], device: torch.device,
            memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_channels, *size, generator=generator).to(device)
    return x.contiguous(memory_format=memory_format)


def inference_fn(model: Callable[[torch.Tensor], object], x: torch.Tensor,
                 precision: Precision | None = None) -> Callable[[], None]:
    """One eval-mode forward pass of ``x`` under ``torch.inference_mode`` (and ``precision``'s autocast):
    what every inference time segbench reports measures."""
    autocast = precision.autocast if precision is not None else contextlib.nullcontext

    def infer() -> None:
        if isinstance(model, nn.Module):
            model.eval()
        with torch.inference_mode(), autocast():
            model(x)

    return infer


# --- peak memory --------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current resident set (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@dataclass
class PeakMemory:
    """Filled in by :func:`peak_memory`: the peak in bytes over the start, and how it was measured."""

    bytes: int | None = None
    method: str = ""

    @property
    def megabytes(self) -> float | None:
        return None if self.bytes is None else self.bytes / 2**20


@contextmanager
def _cuda_peak(device: torch.device, result: PeakMemory) -> Iterator[None]:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    yield
    torch.cuda.synchronize(device)
    result.bytes = torch.cuda.max_memory_allocated(device) - start
    result.method = "torch.cuda.max_memory_allocated over the allocation at start"


def _not_zero(result: PeakMemory) -> None:
    """A peak of 0 bytes is a method that saw nothing, not a measurement: None, and the method says so."""
    if result.bytes is not None and result.bytes <= 0:
        result.bytes = None
        result.method = f"not measured: {result.method} saw no growth"


@contextmanager
def peak_memory(device: torch.device | str) -> Iterator[PeakMemory]:
    """Measure the peak memory the body adds (CUDA: allocated tensors; CPU: resident set, see above)."""
    device = torch.device(device)
    result = PeakMemory()
    if device.type == "cuda":
        with _cuda_peak(device, result):
            yield result
        _not_zero(result)
        return
    start_kib = _proc_status_kib("VmRSS")
    reset = _reset_peak_rss()
    yield result
    peak_kib = _proc_status_kib("VmHWM")
    if start_kib is None or peak_kib is None:
        result.method = "unavailable (no /proc/self/status on this system)"
        return
    result.bytes = (peak_kib - start_kib) * 1024
    if reset:
        result.method = "process peak RSS (VmHWM, reset via /proc/self/clear_refs) over RSS at start"
    else:
        result.method = "process lifetime peak RSS (VmHWM; reset not permitted) over RSS at start: an upper bound"
    _not_zero(result)


CPU_ALLOCATED_METHOD = "peak of tensor bytes allocated through torch's CPU allocator (torch.profiler memory events)"


def _peak_of_events(events: list[tuple[int, int]]) -> int:
    """The running maximum of the bytes held, from (time, +allocated / -freed bytes) events."""
    held = peak = 0
    for _, nbytes in sorted(events):
        held += nbytes
        peak = max(peak, held)
    return peak


@contextmanager
def allocated_peak(device: torch.device | str) -> Iterator[PeakMemory]:
    """The peak of tensor bytes the body holds over those held at its start: CUDA from the allocator's
    statistics, CPU from the profiler's allocation events (see the module docstring). Meant for one
    forward pass; profiling a long body costs time and memory."""
    device = torch.device(device)
    result = PeakMemory()
    if device.type == "cuda":
        with _cuda_peak(device, result):
            yield result
        _not_zero(result)
        return
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_native_stderr():  # kineto prints "USDT: ... profiler_start/stop" lines on every start and stop
        prof.__enter__()
    try:
        yield result
    finally:
        with _quiet_native_stderr():
            prof.__exit__(None, None, None)
    try:  # the profiler's raw events: the public summaries attribute memory to operators, not to time
        events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                  if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    except (AttributeError, RuntimeError) as err:
        result.method = f"unavailable (torch.profiler gave no memory events: {type(err).__name__}: {err})"
        return
    result.bytes = _peak_of_events(events)
    result.method = CPU_ALLOCATED_METHOD
    _not_zero(result)


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null for the body (a native library's own lines; Python's are flushed
    first). Only around the profiler's start and stop, never around the measured work."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 to redirect: nothing to quiet
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# --- everything at once --------------------------------------------------------------------------


def measure_inference(
    model: nn.Module,
    *,
    in_channels: int,
    size: tuple[int, int],
    device: torch.device | str = "cpu",
    precision: Precision | None = None,
    channels_last: bool = False,
    rounds: int = 20,
    max_warmup: int = 10,
) -> dict:
    """Parameters, FLOPs, batch-1 latency and the inference peak memory of ``model`` at input ``size``,
    under ``precision`` (None: fp32) and in channels-last when asked. Run it on a freshly built model
    in a fresh process for the memory figure to mean what it says (see the module docstring)."""
    device = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).eval()
    single = _sample(1, in_channels, size, device, memory_format)
    network = inference_network(model, single, precision or Precision(None, device.type))  # as `segbench predict`
    predictor = network.model
    with allocated_peak(device) as memory:
        # The memory figure covers a batch-1 forward pass, the latency setting.
        inference_fn(predictor, single, precision)()
    with torch.inference_mode():
        flops = count_flops(model, (1, in_channels, *size))
    with watch_load() as load:  # other processes' CPU time during the timing: "machine busy" when it is high
        latency = time_interleaved({"latency": inference_fn(predictor, single, precision)}, rounds=rounds,
                                   max_warmup=max_warmup, device=device)["latency"].summary(1e3)
    return {
        "params": (params := count_parameters(model)),
        "params_m": params / 1e6,
        "gflops": flops / 1e9,
        "latency_ms": latency["median"],
        "latency_q1_ms": latency["q1"],
        "latency_q3_ms": latency["q3"],
        "latency_noisy": latency["noisy"],
        "timing": {"latency": latency},
        "timing_rounds": latency.get("rounds"),
        "measure_precision": precision.name if precision is not None else "fp32",
        "channels_last": channels_last,
        "batchnorm_folded": network.fold.folded,
        "inference_weights": network.stored_in or "fp32",
        "infer_peak_mb": memory.megabytes,
        "memory_method": memory.method,
        **load.load.record(),  # machine_busy, machine_load_1min, machine_other_cpus, machine_cpus, machine_load
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict:
    """Where the numbers came from: the machine (``host``, its name on the network: runs of one review
    may come from several under ``segbench run --launcher ray``), device, its model, torch version,
    threads, CPU, OS, date."""
    device = torch.device(device)
    info = {
        "host": socket.gethostname(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info
