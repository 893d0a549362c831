import random

import numpy as np
import pytest
import torch

from segbench.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from segbench.engine.device import cpu_has_native_bf16, resolve_device, resolve_precision


def _draw():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(), [random.random() for _ in range(3)]


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    np.random.randn()  # leave a cached Gaussian in numpy's state
    save_checkpoint({"format": CHECKPOINT_FORMAT, "rng": capture_rng_state()}, tmp_path / "c.pt")
    first = _draw()
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])  # load_checkpoint uses weights_only=True
    assert _draw() == first
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # the temporary file was renamed away


def test_load_checkpoint_rejects_foreign_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a segbench checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_cpu_bf16_detection_reads_the_flags(tmp_path):
    plain, amx = tmp_path / "plain", tmp_path / "amx"
    plain.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f\n")
    amx.write_text("processor : 0\nflags : fpu avx512f amx_bf16 amx_tile\n")
    assert not cpu_has_native_bf16(str(plain)) and cpu_has_native_bf16(str(amx))
    assert not cpu_has_native_bf16(str(tmp_path / "absent"))


def test_precision_choices_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("off", cpu).name == "fp32"
    assert resolve_precision("bf16", cpu).name == "bf16"
    assert resolve_precision("auto", cpu).name == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert not resolve_precision("bf16", cpu).needs_scaler
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        resolve_precision("fp16", cpu)
    assert resolve_device("cpu") == cpu
    with pytest.raises(ValueError, match="unsupported device|unknown device"):
        resolve_device("tpu")


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp16"), ((7, 0), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_cuda_auto_takes_bf16_only_where_native(monkeypatch, capability, expected):
    # T4 (7.5) and V100 (7.0) emulate bf16 (is_bf16_supported() says True): fp16 + GradScaler there.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    cuda = torch.device("cuda:0")
    chosen = resolve_precision("auto", cuda)
    assert chosen.name == expected and chosen.needs_scaler == (expected == "fp16")
    assert resolve_precision("bf16", cuda).name == "bf16"  # asked for explicitly: honoured
    assert resolve_precision("fp16", cuda).name == "fp16" and resolve_precision("off", cuda).name == "fp32"


@pytest.mark.parametrize("capability", [(7, 0), (8, 6)])
def test_inference_precision_follows_the_device_it_runs_on(monkeypatch, capability):
    from segbench.engine.device import inference_precision

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    cuda, cpu = torch.device("cuda:0"), torch.device("cpu")
    native = capability >= (8, 0)
    assert inference_precision("bf16", cuda).name == ("bf16" if native else "fp16")
    assert inference_precision("auto", cuda).name == ("bf16" if native else "fp16")
    assert inference_precision("fp16", cuda).name == "fp16"
    assert inference_precision("off", cuda).name == "fp32"
    cpu_low = "bf16" if cpu_has_native_bf16() else "fp32"
    for amp in ("fp16", "bf16", "auto"):  # a GPU run's fp16 cannot raise, nor its bf16 be emulated, on a CPU
        assert inference_precision(amp, cpu).name == cpu_low
    assert inference_precision("off", cpu).name == "fp32"


def test_inference_precision_on_a_cpu_without_native_bf16(monkeypatch):
    import segbench.engine.device as device_module
    from segbench.engine.device import inference_precision

    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    assert inference_precision("bf16", torch.device("cpu")).name == "fp32"
    assert inference_precision("fp16", torch.device("cpu")).name == "fp32"
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    assert inference_precision("fp16", torch.device("cpu")).name == "bf16"
