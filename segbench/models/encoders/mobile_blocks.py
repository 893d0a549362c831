"""What the mobile encoders (MobileNetV3, EfficientNet) share: conv-norm-activation units, squeeze-and-
excitation, channel rounding, the dilation plan that turns strides into atrous rates, and the stem
adaptation for other than three input channels.

Module layouts equal torchvision's (``Conv2dNormActivation`` = ``0`` conv, ``1`` BN, ``2`` activation;
``SqueezeExcitation`` = ``fc1``, ``fc2``), so torchvision's ImageNet files load by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from segbench.models.blocks import Encoder

__all__ = [
    "make_divisible", "ConvNormActivation", "SqueezeExcitation", "dilation_plan", "stage_taps", "adapt_stem",
    "init_like_torchvision", "TappedFeatures",
]  # fmt: skip


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% down (the TF reference's
    ``_make_divisible``, which torchvision and timm copy)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvNormActivation(nn.Sequential):
    """Conv (no bias: the BN supplies it), BatchNorm, then ``activation`` unless None. Padding keeps the
    size at stride 1 for any dilation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        norm: Callable[[int], nn.Module],
        activation: Callable[[], nn.Module] | None,
    ):
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False),
            norm(out_channels),
        ]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al. CVPR 2018): global average pool, 1x1 conv down to ``squeeze_channels``,
    ``activation``, 1x1 conv back up, ``gate`` (sigmoid or hard sigmoid), channel-wise product."""

    def __init__(
        self,
        channels: int,
        squeeze_channels: int,
        activation: Callable[[], nn.Module],
        gate: Callable[[], nn.Module],
    ):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = activation()
        self.gate = gate()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.gate(self.fc2(self.activation(self.fc1(x.mean((2, 3), keepdim=True)))))
        return scale * x


def dilation_plan(
    strides: Sequence[int], output_stride: int, *, first_block_rate: str
) -> list[tuple[int, int]]:
    """``(stride, dilation)`` per block, given each block's stride: once the running stride has reached
    ``output_stride``, a strided block runs at stride 1 and the dilation grows by its stride instead
    (atrous convolution, DeepLab Sec. 3.1). ``first_block_rate`` says which rate that first, formerly
    strided block uses: "new" (torchvision's MobileNetV3 ``dilated=True``: the whole stage at the new rate)
    or "previous" (torchvision's ResNet ``replace_stride_with_dilation`` and timm: the block keeps the rate
    it would have sampled its input grid with, later blocks use the new one)."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if first_block_rate not in ("new", "previous"):
        raise ValueError(f"first_block_rate must be 'new' or 'previous', got {first_block_rate!r}")
    plan, running, dilation = [], 1, 1
    for stride in strides:
        if stride > 1 and running * stride > output_stride:
            previous, dilation = dilation, dilation * stride
            plan.append((1, dilation if first_block_rate == "new" else previous))
        else:
            running *= stride
            plan.append((stride, dilation))
    return plan


def stage_taps(nominal_strides: Sequence[int], which: str) -> list[int]:
    """Indices of the modules whose outputs an encoder returns, one per nominal stride (the stride the
    module would have without dilation): the "last" module at each stride (timm's ``features_only``, smp)
    or the "first" (torchvision's segmentation models read the strided blocks, ``_is_cn``); the deepest
    level is the last module either way."""
    if which not in ("first", "last"):
        raise ValueError(f"feature_taps must be 'first' or 'last', got {which!r}")
    levels = sorted(set(nominal_strides))
    pick = (lambda s: nominal_strides.index(s)) if which == "first" else (
        lambda s: len(nominal_strides) - 1 - nominal_strides[::-1].index(s))
    taps = [pick(s) for s in levels]
    taps[-1] = len(nominal_strides) - 1
    return taps


def adapt_stem(state: dict[str, Tensor], key: str, wanted: int) -> dict[str, Tensor]:
    """An RGB stem conv for ``wanted`` input channels: 1 channel: the sum over RGB; n: RGB repeated
    cyclically and scaled by 3/n, which keeps the activation scale (as the ResNet encoder does)."""
    weight = state.get(key)
    if weight is None or weight.shape[1] != 3 or wanted == 3:
        return state
    if wanted == 1:
        adapted = weight.sum(dim=1, keepdim=True)
    else:
        adapted = weight.repeat(1, -(-wanted // 3), 1, 1)[:, :wanted] * (3.0 / wanted)
    return {**state, key: adapted}


def init_like_torchvision(module: nn.Module) -> None:
    """torchvision's MobileNetV3/EfficientNet initialisation: He normal (fan out) convs with zero biases,
    BatchNorm at identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class TappedFeatures(Encoder):
    """An encoder in torchvision's ``features`` layout (MobileNetV3, EfficientNet): ``features`` an
    ``nn.Sequential`` whose first module is the stem (``features.0.0`` its conv), ``taps`` the indices of the
    modules whose outputs ``forward`` returns (``stage_taps``)."""

    features: nn.Sequential
    taps: tuple[int, ...]

    def finish(self, layers: list[nn.Module], channels: list[int], nominal: list[int], actual: list[int], *,
               last: int, norm: Callable[[int], nn.Module], activation: type[nn.Module], feature_taps: str) -> None:
        """The end both layouts share: the 1x1 conv to ``last`` channels after ``layers``, then ``features``, the
        taps ``feature_taps`` picks (``stage_taps``) with their channels and strides, and torchvision's init.
        ``channels``, ``nominal``, ``actual``: per module of ``layers``, its output channels and its stride
        without and with dilation."""
        layers.append(ConvNormActivation(channels[-1], last, 1, norm=norm, activation=activation))
        channels.append(last)
        nominal.append(nominal[-1])
        actual.append(actual[-1])
        self.features = nn.Sequential(*layers)
        self.taps = tuple(stage_taps(nominal, feature_taps))
        self.out_channels = tuple(channels[i] for i in self.taps)
        self.strides = tuple(actual[i] for i in self.taps)
        init_like_torchvision(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Run ``features`` up to the last tap and return the tapped outputs, shallow to deep."""
        outputs, wanted = [], set(self.taps)
        for index, module in enumerate(self.features[: max(self.taps) + 1]):
            x = module(x)
            if index in wanted:
                outputs.append(x)
        return outputs

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """A torchvision file of the same family: drop the ImageNet ``classifier.*`` and adapt the stem conv
        to this encoder's input channels."""
        state = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
        return adapt_stem(state, "features.0.0.weight", self.features[0][0].in_channels)
