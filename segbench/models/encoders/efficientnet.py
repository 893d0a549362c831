"""EfficientNet-B0 to B3 (Tan, Le. EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks. ICML 2019).

B0 is the paper's Table 1: a 3x3/2 stem (32 channels), seven stages of MBConv blocks (Sandler et al. 2018's
inverted residual with squeeze-and-excitation; expansion 1 in stage 1, 6 after; SE squeezes to a quarter of
the block's *input* channels; SiLU/swish activations; stochastic depth on the residual branch, its rate
rising linearly from 0 to ``drop_path_rate`` = 0.2 over the blocks), and a 1x1 conv to 4 x 320 = 1280
channels. B1-B3 scale it by compound scaling (Sec. 3.3), with the (width, depth) multipliers of the
reference implementation: B1 (1.0, 1.1), B2 (1.1, 1.2), B3 (1.2, 1.4); widths are rounded to multiples of
8 (``make_divisible``), depths rounded up. (The resolution coefficient is the caller's input size.)

Layout and parameter names equal torchvision's ``efficientnet_b*().features`` (``features.0`` stem,
``features.1`` ... ``features.7`` stages, ``features.8`` the last 1x1 conv), whose BatchNorm for B0-B4
is PyTorch's default; the encoder holds exactly the parameters of ``features`` (the ImageNet classifier,
``Linear(1280, 1000)`` for B0, is not part of it).

Dense prediction: ``output_stride`` 16 or 8 replaces the stride of the last one or two strided stages by
dilation with the rule of torchvision's ResNet and of timm's EfficientNet (torchvision's EfficientNet has
none): the formerly strided block keeps the previous rate, later blocks use the new one.

``forward`` returns five outputs at strides 2, 4, 8, 16, 32 (before dilation): the ends of stages 1, 2, 3
and 5 and the last 1x1 conv (16/24/40/112/1280 channels for B0), as timm's ``features_only`` except that
the deepest is the 1x1 conv (timm stops at stage 7's 320 channels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from segbench.models.encoders.layers import DropPath
from segbench.models.encoders.mobile_blocks import (
    ConvNormActivation,
    SqueezeExcitation,
    dilation_plan,
    make_divisible,
    TappedFeatures,
)
from segbench.models.registry import register_encoder

__all__ = ["EfficientNet", "MBConv", "EFFICIENTNET_SCALING", "efficientnet"]


@dataclass(frozen=True)
class Stage:
    """One row of Table 1: expansion, kernel, stride, input and output channels, layers."""

    expansion: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    layers: int


B0_STAGES = (
    Stage(1, 3, 1, 32, 16, 1), Stage(6, 3, 2, 16, 24, 2), Stage(6, 5, 2, 24, 40, 2), Stage(6, 3, 2, 40, 80, 3),
    Stage(6, 5, 1, 80, 112, 3), Stage(6, 5, 2, 112, 192, 4), Stage(6, 3, 1, 192, 320, 1),
)  # fmt: skip
# name -> (width, depth) multipliers (the reference implementation's efficientnet_params).
EFFICIENTNET_SCALING: dict[str, tuple[float, float]] = {"b0": (1.0, 1.0), "b1": (1.0, 1.1), "b2": (1.1, 1.2), "b3": (1.2, 1.4)}
LAST_CONV_EXPANSION = 4  # 4 x 320 = 1280 channels for B0


class MBConv(nn.Module):
    """``block`` = [1x1 expand, SiLU] -> depthwise kxk, SiLU -> SE (to input/4, SiLU, sigmoid) -> 1x1 project;
    the input is added (after stochastic depth on the branch) when stride is 1 and the channels match."""

    def __init__(
        self, in_channels: int, out_channels: int, expansion: int, kernel: int, stride: int, dilation: int,
        drop_path: float,
    ):  # fmt: skip
        super().__init__()
        expanded = make_divisible(in_channels * expansion, 8)
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvNormActivation(in_channels, expanded, 1, norm=nn.BatchNorm2d, activation=nn.SiLU))
        layers.append(ConvNormActivation(expanded, expanded, kernel, stride=stride, dilation=dilation, groups=expanded,
                                         norm=nn.BatchNorm2d, activation=nn.SiLU))  # fmt: skip
        layers.append(SqueezeExcitation(expanded, max(1, in_channels // 4), nn.SiLU, nn.Sigmoid))
        layers.append(ConvNormActivation(expanded, out_channels, 1, norm=nn.BatchNorm2d, activation=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = DropPath(drop_path)
        # A dilated stage's first block changes the channel count, so stride 1 there adds no shortcut.
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return self.stochastic_depth(out) + x if self.use_residual else out


class EfficientNet(TappedFeatures):
    """EfficientNet ``features`` as an encoder; see the module docstring."""

    def __init__(self, variant: str, *, in_channels: int = 3, output_stride: int = 32, drop_path_rate: float = 0.2):
        super().__init__()
        if variant not in EFFICIENTNET_SCALING:
            raise ValueError(f"EfficientNet variant must be one of {sorted(EFFICIENTNET_SCALING)}, got {variant!r}")
        width, depth = EFFICIENTNET_SCALING[variant]
        stages = [
            Stage(s.expansion, s.kernel, s.stride, make_divisible(s.in_channels * width, 8),
                  make_divisible(s.out_channels * width, 8), math.ceil(s.layers * depth))
            for s in B0_STAGES
        ]  # fmt: skip
        block_strides = [s.stride if i == 0 else 1 for s in stages for i in range(s.layers)]
        plan = iter(dilation_plan([2] + block_strides, output_stride, first_block_rate="previous")[1:])
        total = len(block_strides)
        stem = stages[0].in_channels
        layers: list[nn.Module] = [
            ConvNormActivation(in_channels, stem, 3, stride=2, norm=nn.BatchNorm2d, activation=nn.SiLU)
        ]
        channels, nominal, actual, index = [stem], [2], [2], 0
        for stage in stages:
            blocks, stage_stride = [], 1
            for i in range(stage.layers):
                stride, dilation = next(plan)
                blocks.append(MBConv(stage.out_channels if i else stage.in_channels, stage.out_channels,
                                     stage.expansion, stage.kernel, stride, dilation, drop_path_rate * index / total))  # fmt: skip
                stage_stride *= stride
                index += 1
            layers.append(nn.Sequential(*blocks))
            channels.append(stage.out_channels)
            nominal.append(nominal[-1] * stage.stride)
            actual.append(actual[-1] * stage_stride)
        self.variant = variant
        self.output_stride = output_stride
        self.finish(layers, channels, nominal, actual, last=LAST_CONV_EXPANSION * stages[-1].out_channels,
                    norm=nn.BatchNorm2d, activation=nn.SiLU, feature_taps="last")


def efficientnet(
    *, variant: str, in_channels: int = 3, output_stride: int = 32, drop_path_rate: float = 0.2
) -> EfficientNet:
    """Builder behind ``efficientnet_b0`` ... ``efficientnet_b3``; see ``EfficientNet``."""
    return EfficientNet(variant, in_channels=in_channels, output_stride=output_stride, drop_path_rate=drop_path_rate)


for _variant in EFFICIENTNET_SCALING:
    register_encoder(f"efficientnet_{_variant}", kind="efficientnet", variant=_variant)(efficientnet)
