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
from torch import nn

SAME_FUNCTION_REL = 1e-5


def assert_same_function(got: torch.Tensor, expected: torch.Tensor, rel: float = SAME_FUNCTION_REL) -> None:
    """``got`` equals ``expected`` up to float rounding, at a tolerance relative to the output's scale."""
    scale = expected.detach().abs().max().item()
    torch.testing.assert_close(got, expected, rtol=rel, atol=rel * max(scale, 1e-12))


def randomise_constants(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every floating tensor of ``module`` whose entries are all equal (LayerNorm/BatchNorm 1 and 0, running
    statistics, zero biases) gets random entries: positive around 1 for weights and variances, around 0
    otherwise. Random convolution and linear weights are left as initialised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            flat = tensor.detach().flatten()
            if not tensor.is_floating_point() or flat.numel() < 2 or not torch.all(flat == flat[0]):
                continue
            noise = torch.rand(tensor.shape, generator=generator)
            tensor.copy_(0.5 + noise if name.endswith(("weight", "running_var")) else 0.2 * (noise - 0.5))
    return module


def set_mode(module: nn.Module, mode: str) -> nn.Module:
    """``eval``, or ``train`` with dropout and stochastic depth switched off (BatchNorm on batch statistics)."""
    module.train(mode == "train")
    for layer in module.modules():
        if isinstance(layer, nn.modules.dropout._DropoutNd) or type(layer).__name__.endswith("DropPath"):
            layer.eval()
    return module


def calibrate_batch_norm(module: nn.Module, in_channels: int = 3, size: int = 64) -> nn.Module:
    """BatchNorm running statistics set to the batch statistics of two random batches (cumulative average;
    momenta kept). With random statistics a deep random network's eval-mode features can collapse to a
    constant (a random MobileNetV3's last stage does), so a comparison would only see the head's biases."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(2):
            module(torch.randn(4, in_channels, size, size, generator=generator))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return module
