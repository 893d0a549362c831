"""The CPU precision rule, for both kinds of CPU whatever this machine is: bf16 autocast only where the
CPU computes bf16 natively (AVX512-BF16 or AMX), fp32 elsewhere (emulated bf16 is several times slower)."""

import pytest
import torch

from segbench.engine import device as device_module
from segbench.engine.device import cpu_has_native_bf16, resolve_precision

AVX2 = "processor : 0\nmodel name : x\nflags : fpu sse2 avx avx2 fma\n"
AVX512_BF16 = "processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n"
AMX = "processor : 0\nflags : fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n"


@pytest.mark.parametrize("flags, native", [(AVX2, False), (AVX512_BF16, True), (AMX, True)])
def test_native_bf16_is_read_from_the_flags(tmp_path, flags, native):
    path = tmp_path / "cpuinfo"
    path.write_text(flags)
    assert cpu_has_native_bf16(str(path)) is native


@pytest.mark.parametrize("native, expected", [(False, "fp32"), (True, "bf16")])
def test_auto_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).name == expected
    # The explicit choices do not depend on the CPU.
    assert resolve_precision("off", cpu).name == "fp32"
    assert resolve_precision("bf16", cpu).name == "bf16"


@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_math_sets_tf32_for_matmuls_and_convolutions_alike_and_restores(deterministic):
    from segbench.engine.device import cuda_math, math_settings

    before = math_settings("cuda")
    assert math_settings("cpu") is None  # nothing of this applies to the CPU
    with cuda_math(deterministic=deterministic):
        inside = math_settings("cuda")
        assert inside["tf32_matmul"] is inside["tf32_conv"] is True
        assert inside["deterministic"] is deterministic and inside["cudnn_benchmark"] is not deterministic
        with cuda_math(tf32=False):
            assert not math_settings("cuda")["tf32_matmul"] and not math_settings("cuda")["tf32_conv"]
        assert math_settings("cuda") == inside
    assert math_settings("cuda") == before
