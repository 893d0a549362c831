"""Which device and which mixed precision a run uses.

Mixed precision pays only where the hardware computes low precision natively: on CUDA, bf16 where
the GPU has it natively (compute capability 8.0 and later: Ampere, Hopper, ...; no loss scaling
needed) else fp16 with a ``GradScaler`` (T4, V100: ``torch.cuda.is_bf16_supported()`` says True
there too, counting emulation, which is slower than fp16); on CPU, bf16 only with AVX512-BF16 or
AMX (elsewhere PyTorch emulates bf16, which is slower than fp32).

Training resolves ``train.amp`` with ``resolve_precision``; evaluation and prediction, which may run
on another machine than training did, use ``inference_precision``: the run's choice where this
device computes it natively, else the nearest precision it does.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import lru_cache

import torch

__all__ = [
    "Precision",
    "resolve_channels_last",
    "cuda_math",
    "math_settings",
    "resolve_device",
    "resolve_precision",
    "inference_precision",
    "cpu_has_native_bf16",
    "cuda_has_native_bf16",
]


@lru_cache(maxsize=4)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU flags list ``avx512_bf16`` or ``amx_bf16`` (Linux x86; False elsewhere)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def cuda_has_native_bf16(device: torch.device) -> bool:
    """True on GPUs with bf16 tensor cores: compute capability 8.0 or later (emulation not counted)."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> this process's GPU when CUDA is available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"train.device={name!r} but CUDA is not available here; use cpu or auto")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype | None  # autocast dtype; None: full fp32
    device_type: str

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype matmuls and convolutions compute in under this precision."""
        return self.dtype or torch.float32

    @property
    def needs_scaler(self) -> bool:
        # fp16's narrow exponent underflows small gradients; bf16 shares fp32's range.
        return self.dtype is torch.float16

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """The autocast precision for ``amp`` ("auto", "off", "bf16", "fp16") on ``device``.

    An explicit ``bf16`` is honoured on any GPU (emulated, and slow, before compute capability 8.0);
    ``auto`` takes bf16 only where it is native.
    """
    if amp == "off":
        return Precision(None, device.type)
    if device.type == "cuda":
        if amp == "auto":
            amp = "bf16" if cuda_has_native_bf16(device) else "fp16"
        return Precision(torch.bfloat16 if amp == "bf16" else torch.float16, "cuda")
    if amp == "fp16":
        raise ValueError("train.amp=fp16 needs CUDA; on CPU use bf16 (native only with AVX512-BF16/AMX) or off")
    if amp == "auto":
        return Precision(torch.bfloat16 if cpu_has_native_bf16() else None, "cpu")
    return Precision(torch.bfloat16, "cpu")


def inference_precision(amp: str, device: torch.device) -> Precision:
    """The precision to evaluate or predict with, for a run trained with ``train.amp=amp``, on ``device``.

    A run trained in fp32 is evaluated in fp32. A mixed-precision run keeps its low precision where
    ``device`` computes it natively and otherwise takes what the device does natively: a GPU without
    native bf16 uses fp16; a CPU uses bf16 with AVX512-BF16/AMX, else fp32 (fp16 autocast does not
    exist on CPU, and emulated bf16 there is about 20x slower than fp32).
    """
    if amp == "off":
        return Precision(None, device.type)
    if device.type == "cuda":
        if amp == "fp16" or not cuda_has_native_bf16(device):
            return Precision(torch.float16, "cuda")
        return Precision(torch.bfloat16, "cuda")
    return Precision(torch.bfloat16 if cpu_has_native_bf16() else None, "cpu")


@contextlib.contextmanager
def cuda_math(*, deterministic: bool = False, tf32: bool = True):
    """CUDA's math settings for the body, restored afterwards (no effect on the CPU).

    - TF32 for matmuls *and* convolutions. PyTorch's default enables it for cuDNN convolutions only, so
      a CNN's fp32 work would run in TF32 and a transformer's matmuls in full fp32: neither comparable
      with each other nor with a matmul ceiling. Under bf16/fp16 autocast it only touches fp32 ops.
    - ``deterministic``: deterministic kernels where PyTorch has them (with the cuBLAS workspace setting
      they need), cuDNN's autotuner off. Otherwise cuDNN tries its algorithms for each new input shape
      and keeps the fastest (``cudnn.benchmark``; fixed crops: once).
    """
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    else:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[4], saved[5]


def math_settings(device: torch.device | str) -> dict | None:
    """What a figure taken on ``device`` ran under: TF32 for matmuls and convolutions, cuDNN's autotuner
    and deterministic algorithms (None on the CPU, where these do not apply)."""
    if torch.device(device).type != "cuda":
        return None
    return {"tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_conv": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "deterministic": torch.are_deterministic_algorithms_enabled()}


def resolve_channels_last(setting: bool | str | None, family: str) -> bool:
    """``train.channels_last`` for a model of ``family``: "auto" (or None) is channels-last for CNNs,
    whose convolutions run faster in it, and not for transformers, whose tokens are (N, L, C) anyway."""
    return family == "cnn" if setting in ("auto", None) else bool(setting)
