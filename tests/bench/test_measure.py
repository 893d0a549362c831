"""Measurement helpers: peak memory, timing, the whole inference measurement, the machine record."""

import os

import pytest
import torch
from torch import nn

from segbench.bench.measure import machine_info, measure_inference, peak_memory, time_forward


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="CPU peak memory reads /proc/self/status (Linux)")
def test_peak_memory_sees_a_temporary_allocation():
    with peak_memory("cpu") as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert memory.method.startswith("process")
    # Freed again before the end: only a peak measurement can see it.
    assert memory.megabytes >= 60, memory


def test_time_forward_counts_runs():
    model = nn.Conv2d(1, 2, 3)
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    times = time_forward(model, torch.zeros(1, 1, 8, 8), warmup=3, runs=7)
    assert len(times) == 7 and len(calls) == 10 and all(t > 0 for t in times)


def test_measure_inference_known_model():
    # One 3x3 conv, 1 -> 4 channels, no bias, padding 1: 9 * 1 * 4 multiply-adds per output pixel.
    model = nn.Conv2d(1, 4, 3, padding=1, bias=False)
    result = measure_inference(model, in_channels=1, size=(16, 20), runs=20, warmup=2, throughput_runs=2)
    assert result["params"] == 36
    assert result["gflops"] * 1e9 == 2 * 36 * 16 * 20
    assert result["latency_runs"] == 20 and result["latency_ms"] > 0
    assert result["latency_p90_ms"] >= result["latency_ms"]
    assert result["throughput_batch"] == 8 and result["throughput_ips"] > 0
    assert result["infer_peak_mb"] is not None and result["memory_method"]


def test_machine_info_names_the_machine():
    info = machine_info("cpu")
    assert info["device"] == "cpu" and info["torch"] == torch.__version__
    assert info["torch_threads"] >= 1 and info["cpu"] and info["date"]
