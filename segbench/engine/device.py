"""Which device and which mixed precision a run uses.

Mixed precision pays only where the hardware computes low precision natively: on CUDA, bf16 where
supported (Ampere and later; no loss scaling needed) else fp16 with a ``GradScaler``; on CPU, bf16
only with AVX512-BF16 or AMX (elsewhere PyTorch emulates bf16, which is slower than fp32).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache

import torch

__all__ = ["Precision", "resolve_device", "resolve_precision", "cpu_has_native_bf16"]


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
    def needs_scaler(self) -> bool:
        # fp16's narrow exponent underflows small gradients; bf16 shares fp32's range.
        return self.dtype is torch.float16

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """The autocast precision for ``amp`` ("auto", "off", "bf16", "fp16") on ``device``."""
    if amp == "off":
        return Precision(None, device.type)
    if device.type == "cuda":
        if amp == "auto":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return Precision(torch.bfloat16 if amp == "bf16" else torch.float16, "cuda")
    if amp == "fp16":
        raise ValueError("train.amp=fp16 needs CUDA; on CPU use bf16 (native only with AVX512-BF16/AMX) or off")
    if amp == "auto":
        return Precision(torch.bfloat16 if cpu_has_native_bf16() else None, "cpu")
    return Precision(torch.bfloat16, "cpu")
