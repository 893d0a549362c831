"""Measurement helpers: peak memory, timing, the whole inference measurement, the machine record."""

import os

import pytest
import torch
from torch import nn

from segbench.bench.measure.cost import (CPU_ALLOCATED_METHOD, allocated_peak, inference_fn, machine_info,
                                        measure_inference, peak_memory)
from segbench.engine.device import Precision


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="CPU peak memory reads /proc/self/status (Linux)")
def test_peak_memory_sees_a_temporary_allocation():
    with peak_memory("cpu") as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert memory.method.startswith("process")
    # Freed again before the end: only a peak measurement can see it.
    assert memory.megabytes >= 60, memory


class _Allocates(nn.Module):
    """A forward pass that holds two known buffers at once: its peak is at least their sum."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = torch.ones(2**18)  # 1 MiB of float32
        second = first * 2  # another MiB while the first is alive
        return x + second.sum()


def test_cpu_inference_memory_is_the_peak_of_allocated_tensor_bytes_and_deterministic():
    model, x = _Allocates(), torch.zeros(1)
    peaks = []
    for _ in range(2):
        with allocated_peak("cpu") as memory:
            inference_fn(model, x)()
        peaks.append(memory.bytes)
    assert memory.method == CPU_ALLOCATED_METHOD
    assert peaks[0] == peaks[1] >= 2 * 2**20  # both buffers were alive together; the same sequence both times


def test_a_peak_that_saw_nothing_is_missing_not_zero():
    with allocated_peak("cpu") as memory:
        pass  # allocates nothing: the profiler sees no event
    assert memory.bytes is None and memory.megabytes is None and memory.method.startswith("not measured")


def test_inference_fn_runs_in_eval_mode_without_grad_and_under_the_precision():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Dropout(0.5)).train()
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append((module.training, out.requires_grad, out.dtype)))
    inference_fn(model, torch.ones(1, 1, 8, 8))()
    inference_fn(model, torch.ones(1, 1, 8, 8), Precision(torch.bfloat16, "cpu"))()
    assert seen == [(False, False, torch.float32), (False, False, torch.bfloat16)]


def test_measure_inference_known_model():
    # One 3x3 conv, 1 -> 4 channels, no bias, padding 1: 9 * 1 * 4 multiply-adds per output pixel.
    model = nn.Conv2d(1, 4, 3, padding=1, bias=False)
    result = measure_inference(model, in_channels=1, size=(16, 20), rounds=6, max_warmup=3, channels_last=True)
    assert result["params"] == 36
    assert result["gflops"] * 1e9 == 2 * 36 * 16 * 20
    assert result["timing"]["latency"]["rounds"] == 6
    assert 0 < result["latency_q1_ms"] <= result["latency_ms"] <= result["latency_q3_ms"]
    assert "throughput_ips" not in result  # one producer: the Speed section's inference measurement
    assert result["measure_precision"] == "fp32" and result["channels_last"] is True
    # The 4-channel 16x20 float32 output at least (the input and weights were held before).
    assert isinstance(result["machine_busy"], bool) and result["machine_load"].startswith("machine ")
    assert result["infer_peak_mb"] * 2**20 >= 4 * 16 * 20 * 4 and result["memory_method"] == CPU_ALLOCATED_METHOD


def test_machine_info_names_the_machine():
    info = machine_info("cpu")
    assert info["device"] == "cpu" and info["torch"] == torch.__version__
    assert info["torch_threads"] >= 1 and info["cpu"] and info["date"]
