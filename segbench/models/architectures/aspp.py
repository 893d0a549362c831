"""Atrous Spatial Pyramid Pooling and its pieces, shared by DeepLab v3/v3+ (``deeplab.py``) and, for the
pooled-branch norm, PSPNet (``pspnet.py``).

DeepLab v3's ASPP (Chen et al. 2017, "Rethinking Atrous Convolution", Sec. 3.3): a 1x1 conv, three 3x3
atrous convs and an image-level branch (global average pool, 1x1 conv, BN, ReLU, bilinear upsample), each
with 256 filters and BN, concatenated and projected by a 1x1 conv (BN, ReLU, dropout). The submodule
layout equals torchvision's ``ASPP`` (``convs.0`` 1x1, ``convs.1..n`` atrous, ``convs.n+1`` pooling,
``project``), so torchvision checkpoints map key for key.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.blocks import ConvBNReLU, resize

__all__ = ["PooledBatchNorm2d", "ASPPPooling", "SeparableConvBNReLU", "ASPP", "scaled_rates"]


class PooledBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm for a globally pooled map, safe for a training batch of one image.

    After a global average pool each channel holds N values; with N = 1 batch statistics are undefined
    and ``nn.BatchNorm2d`` raises (torchvision's ``ASPPPooling`` fails the same way). Here such a batch is
    normalised with the running statistics, which it leaves unchanged, exactly as in eval mode; the
    affine parameters still learn. Any batch with more than one value per channel behaves as plain BN.
    Keys and parameters are those of ``nn.BatchNorm2d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class ASPPPooling(nn.Sequential):
    """Image-level features (Sec. 3.3): global average pool, 1x1 conv, BN, ReLU, bilinear upsample."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            PooledBatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return resize(super().forward(x), x)


class SeparableConvBNReLU(nn.Sequential):
    """Atrous depthwise-separable conv (DeepLab v3+, Chen et al. ECCV 2018, Sec. 3.1 and Fig. 3): a 3x3
    depthwise conv (dilated), BN, ReLU, then a 1x1 pointwise conv, BN, ReLU, as the reference
    implementation's ``split_separable_conv2d``."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1):
        super().__init__(
            OrderedDict(
                depthwise=nn.Conv2d(
                    in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, bias=False
                ),
                depthwise_bn=nn.BatchNorm2d(in_channels),
                depthwise_relu=nn.ReLU(inplace=True),
                pointwise=nn.Conv2d(in_channels, out_channels, 1, bias=False),
                pointwise_bn=nn.BatchNorm2d(out_channels),
                pointwise_relu=nn.ReLU(inplace=True),
            )
        )


class ASPP(nn.Module):
    """DeepLab v3's ASPP with image-level features; ``separable=True`` makes the atrous branches
    depthwise-separable (DeepLab v3+'s Xception variant). ``dropout`` follows the projection."""

    def __init__(
        self,
        in_channels: int,
        atrous_rates: Sequence[int],
        out_channels: int = 256,
        dropout: float = 0.5,
        separable: bool = False,
    ):
        super().__init__()
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, 1)]
        for rate in atrous_rates:
            if separable:
                branches.append(SeparableConvBNReLU(in_channels, out_channels, rate))
            else:
                branches.append(ConvBNReLU(in_channels, out_channels, 3, dilation=rate))
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


def scaled_rates(rates: Sequence[int], reference_stride: int, output_stride: int) -> tuple[int, ...]:
    """Atrous rates given for ``reference_stride`` rescaled to ``output_stride`` so they cover the same
    image area: DeepLab v3 doubles (6, 12, 18) at OS 16 to (12, 24, 36) at OS 8 (Sec. 3.3); halving
    rounds to the nearest integer, never below 1."""
    return tuple(max(1, round(r * reference_stride / output_stride)) for r in rates)
