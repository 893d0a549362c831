"""How the tests compare two computations of the same function (a converted model against its source,
ONNX Runtime against PyTorch).

Two float32 implementations of one network never agree bit for bit: kernels differ between CPUs
(oneDNN's AVX-512 and AVX2 paths, AMX) and sum in different orders, and the difference grows with the
magnitude of the values. An absolute bound is then a statement about one machine. The bound here is
relative to the output's scale: every element within ``rel`` of the larger of its expected value and
the largest expected magnitude. float32 rounds at 6e-8; through a few dozen layers the observed
differences are 1e-7 to 1e-6 of the scale, so 1e-5 leaves a factor of ten for other kernels while a
real conversion bug (a swapped, transposed or missing tensor) changes the output by a sizeable fraction
of its scale and still fails (the converter tests show that by breaking a conversion on purpose).
"""

from __future__ import annotations

import torch

SAME_FUNCTION_REL = 1e-5


def assert_same_function(got: torch.Tensor, expected: torch.Tensor, rel: float = SAME_FUNCTION_REL) -> None:
    """``got`` equals ``expected`` up to float rounding, at a tolerance relative to the output's scale."""
    scale = expected.detach().abs().max().item()
    torch.testing.assert_close(got, expected, rtol=rel, atol=rel * max(scale, 1e-12))
