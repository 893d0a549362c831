"""Parameter and FLOP counts, shared by `segbench models`, the review and the speed benchmark.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts as 2 FLOPs, as
PyTorch counts them). Counting runs on the meta device when the model is there, so even FCN-8s at
512x512 is counted without computing anything.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from typing import Callable

__all__ = ["count_parameters", "count_flops", "count_flops_of"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops_of(fn: Callable[[], object]) -> int:
    """FLOPs of whatever ``fn`` computes (matmuls and convolutions, forward and backward alike)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def count_flops(model: nn.Module, input_shape: tuple[int, ...], *, backward: bool = False) -> int:
    """FLOPs of one forward pass (plus the backward pass if ``backward``) on an input of ``input_shape``
    (N, C, H, W), with the model in its current train/eval mode."""
    device = next(model.parameters()).device
    x = torch.randn(input_shape, device=device)

    def run() -> None:
        out = model(x)
        if backward:
            logits = out["out"] if isinstance(out, dict) else out
            loss = logits.float().mean()
            if isinstance(out, dict) and "aux" in out:
                loss = loss + out["aux"].float().mean()
            loss.backward()

    return count_flops_of(run)
