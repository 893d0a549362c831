"""MobileNetV3-Large and -Small (Howard, Sandler, Chu, Chen, Chen, Tan, Wang, Zhu, Pang, Vasudevan, Le,
Adam. Searching for MobileNetV3. ICCV 2019).

The network of the paper's Tables 1 (Large) and 2 (Small), in torchvision's layout: ``features`` =
the 3x3/2 stem (16 channels, hard-swish), the inverted-residual blocks ("bneck", Sec. 5.3: 1x1 expansion
unless the expansion equals the input, depthwise kxk, optional squeeze-and-excitation with a quarter of
the expanded channels rounded to a multiple of 8 and a hard-sigmoid gate, linear 1x1 projection, a
residual connection when shape allows), and the last 1x1 conv to 6x channels (960 / 576, hard-swish).
ReLU in the early blocks and hard-swish, ``x * ReLU6(x + 3) / 6`` (Sec. 5.2), in the later ones, as the
tables' NL column says. BatchNorm with eps 0.001 and momentum 0.01, as torchvision's. Module and
parameter names equal torchvision's ``mobilenet_v3_large/small().features``, so its ImageNet files load
once their classifier is dropped (``adapt_state_dict``); the encoder holds exactly the parameters of
torchvision's ``features`` (the classifier, ``Linear(960, 1280)`` and ``Linear(1280, 1000)`` for Large,
is not part of it).

Dense prediction: ``output_stride`` 16 dilates the last stage (torchvision's ``dilated=True``, used by
its ``lraspp_mobilenet_v3_large`` and ``deeplabv3_mobilenet_v3_large``): its strided block runs at stride
1 and every depthwise conv of the stage, the first included, at rate 2. ``output_stride`` 8 does the
same to the stride-16 stage too (rates 2, then 4); torchvision has no OS 8 for MobileNetV3.

``forward`` returns five outputs at strides 2, 4, 8, 16, 32 (before dilation), the deepest always the last
1x1 conv. ``feature_taps`` picks which block represents each shallower stride: "last" (default; timm's
``features_only`` and smp: the end of each stage, channels 16/24/40/112/960 for Large) or "first"
(torchvision's segmentation models read the first, strided block of each stage: 16/24/40/80/960 for
Large; LR-ASPP uses it to equal torchvision).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch import Tensor, nn

from segbench.models.encoders.mobile_blocks import (
    ConvNormActivation,
    SqueezeExcitation,
    dilation_plan,
    make_divisible,
    TappedFeatures,
)
from segbench.models.registry import register_encoder

__all__ = ["MobileNetV3", "InvertedResidual", "Bneck", "MOBILENET_V3_SETTINGS", "mobilenet_v3"]


@dataclass(frozen=True)
class Bneck:
    """One row of the paper's Table 1/2: kernel, expansion ("exp size"), output channels, SE, NL, stride."""

    kernel: int
    expanded: int
    out: int
    squeeze_excite: bool
    hard_swish: bool
    stride: int


_B = Bneck
MOBILENET_V3_SETTINGS: dict[str, tuple[Bneck, ...]] = {
    "large": (  # Table 1
        _B(3, 16, 16, False, False, 1), _B(3, 64, 24, False, False, 2), _B(3, 72, 24, False, False, 1),
        _B(5, 72, 40, True, False, 2), _B(5, 120, 40, True, False, 1), _B(5, 120, 40, True, False, 1),
        _B(3, 240, 80, False, True, 2), _B(3, 200, 80, False, True, 1), _B(3, 184, 80, False, True, 1),
        _B(3, 184, 80, False, True, 1), _B(3, 480, 112, True, True, 1), _B(3, 672, 112, True, True, 1),
        _B(5, 672, 160, True, True, 2), _B(5, 960, 160, True, True, 1), _B(5, 960, 160, True, True, 1),
    ),
    "small": (  # Table 2
        _B(3, 16, 16, True, False, 2), _B(3, 72, 24, False, False, 2), _B(3, 88, 24, False, False, 1),
        _B(5, 96, 40, True, True, 2), _B(5, 240, 40, True, True, 1), _B(5, 240, 40, True, True, 1),
        _B(5, 120, 48, True, True, 1), _B(5, 144, 48, True, True, 1), _B(5, 288, 96, True, True, 2),
        _B(5, 576, 96, True, True, 1), _B(5, 576, 96, True, True, 1),
    ),
}  # fmt: skip
STEM_CHANNELS = 16
LAST_CONV_EXPANSION = 6  # the last 1x1 conv: 6 x 160 = 960 (Large), 6 x 96 = 576 (Small)

_norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)  # torchvision's (from the TF reference)


class InvertedResidual(nn.Module):
    """The bneck block (Sec. 5.3, Fig. 4): ``block`` = [1x1 expand] -> depthwise -> [SE] -> 1x1 project;
    the input is added when stride is 1 and the channels match."""

    def __init__(self, in_channels: int, config: Bneck, stride: int, dilation: int):
        super().__init__()
        act = nn.Hardswish if config.hard_swish else nn.ReLU
        layers: list[nn.Module] = []
        if config.expanded != in_channels:
            layers.append(ConvNormActivation(in_channels, config.expanded, 1, norm=_norm, activation=act))
        layers.append(ConvNormActivation(config.expanded, config.expanded, config.kernel, stride=stride,
                                         dilation=dilation, groups=config.expanded, norm=_norm, activation=act))  # fmt: skip
        if config.squeeze_excite:
            squeeze = make_divisible(config.expanded // 4, 8)
            layers.append(SqueezeExcitation(config.expanded, squeeze, nn.ReLU, nn.Hardsigmoid))
        layers.append(ConvNormActivation(config.expanded, config.out, 1, norm=_norm, activation=None))
        self.block = nn.Sequential(*layers)
        # Decided on the nominal stride, as torchvision: a dilated stage's first block has no shortcut either.
        self.use_residual = config.stride == 1 and in_channels == config.out

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class MobileNetV3(TappedFeatures):
    """MobileNetV3 ``features`` as an encoder; see the module docstring."""

    def __init__(self, variant: str, *, in_channels: int = 3, output_stride: int = 32, feature_taps: str = "last"):
        super().__init__()
        if variant not in MOBILENET_V3_SETTINGS:
            raise ValueError(f"MobileNetV3 variant must be one of {sorted(MOBILENET_V3_SETTINGS)}, got {variant!r}")
        settings = MOBILENET_V3_SETTINGS[variant]
        plan = dilation_plan([2] + [c.stride for c in settings], output_stride, first_block_rate="new")[1:]  # after the stem
        layers: list[nn.Module] = [
            ConvNormActivation(in_channels, STEM_CHANNELS, 3, stride=2, norm=_norm, activation=nn.Hardswish)
        ]
        channels, nominal, actual = [STEM_CHANNELS], [2], [2]
        for config, (stride, dilation) in zip(settings, plan):
            layers.append(InvertedResidual(channels[-1], config, stride, dilation))
            channels.append(config.out)
            nominal.append(nominal[-1] * config.stride)
            actual.append(actual[-1] * stride)
        self.variant = variant
        self.output_stride = output_stride
        self.feature_taps = feature_taps
        self.finish(layers, channels, nominal, actual, last=LAST_CONV_EXPANSION * channels[-1], norm=_norm,
                    activation=nn.Hardswish, feature_taps=feature_taps)


def mobilenet_v3(
    *, variant: str, in_channels: int = 3, output_stride: int = 32, feature_taps: str = "last"
) -> MobileNetV3:
    """Builder behind ``mobilenet_v3_large`` / ``mobilenet_v3_small``; see ``MobileNetV3``."""
    return MobileNetV3(variant, in_channels=in_channels, output_stride=output_stride, feature_taps=feature_taps)


for _variant in MOBILENET_V3_SETTINGS:
    register_encoder(f"mobilenet_v3_{_variant}", kind="mobilenetv3", variant=_variant)(mobilenet_v3)
