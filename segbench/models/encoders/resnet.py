"""ResNet-18/34/50/101 (He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016).

The layout is torchvision's: a 7x7/2 stem conv, BN, ReLU, 3x3/2 max-pool, then four stages of residual
blocks (paper Table 1). ResNet-18/34 stack BasicBlocks (two 3x3 convs); ResNet-50/101 stack Bottlenecks
(1x1, 3x3, 1x1) with the stride on the 3x3 conv ("ResNet v1.5", as torchvision and timm do; the paper's
Caffe model strides the first 1x1). Module and parameter names equal torchvision's, so a torchvision or
timm ``resnet*`` checkpoint loads with ``strict=True`` once its ImageNet ``fc`` is dropped
(``adapt_state_dict`` does that).

Dense prediction options:

- ``output_stride`` in {8, 16, 32}: the strides of the last one or two stages are replaced by dilation
  (atrous convolution; DeepLab, Chen et al. PAMI 2018 Sec. 3.1; PSPNet, Zhao et al. CVPR 2017 Sec. 3.2),
  with torchvision's ``replace_stride_with_dilation`` semantics: the first block of a dilated stage keeps
  the previous stage's dilation on its first 3x3 conv (the one that would have strided), later convs
  use the stage's rate. ImageNet weights therefore stay valid: every conv sees the same sampling pattern
  it was trained with, relative to its own input grid.
- ``multi_grid``: DeepLab v3's unit rates for the blocks of the last stage (Chen et al. 2017, "Rethinking
  Atrous Convolution", Sec. 3.2): block ``i`` of layer4 uses dilation ``stage_rate * multi_grid[i]`` on
  its 3x3 conv(s), the first block included (e.g. OS 16, (1, 2, 4) -> rates (2, 4, 8)).

``forward`` returns five stage outputs: the stem after conv1/bn1/relu (stride 2), layer1 (4), layer2 (8),
layer3 (16, or 8 at OS 8) and layer4 (32, 16 or 8).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from segbench.models.blocks import Encoder
from segbench.models.registry import ENCODERS, build_encoder, register_encoder

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet", "build_dilated_resnet", "RESNET_DEPTHS", "PAPER_MULTI_GRID"]

# depth -> (block type, blocks per stage); paper Table 1.
RESNET_DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    # padding = dilation keeps the spatial size at stride 1 for any dilation.
    return nn.Conv2d(in_channels, out_channels, 3, stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut. ``first_dilation`` is the dilation
    of conv1, ``dilation`` that of conv2 (torchvision itself refuses dilation in BasicBlock; we allow it
    so ResNet-18/34 serve as dilated backbones too)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        first_dilation: int | None = None,
    ):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, first_dilation or dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place, as torchvision: one tensor fewer per block (BatchNorm's backward needs its input, not its output)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided and/or dilated), 1x1 expand x4, with the shortcut. Only the 3x3 conv
    is dilated, with ``first_dilation`` (a stage's first block) or else ``dilation``."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        first_dilation: int | None = None,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, first_dilation or dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity  # in place, as above
        return self.relu(out)


class ResNet(Encoder):
    """The ResNet trunk as an encoder (no global pool, no ``fc``); see the module docstring."""

    def __init__(
        self,
        depth: int,
        *,
        in_channels: int = 3,
        output_stride: int = 32,
        multi_grid: Sequence[int] | None = None,
    ):
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        kind, blocks = RESNET_DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        if multi_grid is not None:
            multi_grid = tuple(int(r) for r in multi_grid)
            if len(multi_grid) != blocks[3] or min(multi_grid) < 1:
                raise ValueError(
                    f"multi_grid needs one positive rate per block of layer4: resnet{depth} has {blocks[3]} "
                    f"blocks there, got {multi_grid}; e.g. {(1, 2, 4)[: blocks[3]]} or None"
                )
        self.depth = depth
        self.output_stride = output_stride
        self.multi_grid = multi_grid

        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)

        self._inplanes = 64
        self._dilation = 1
        stride_so_far = 4
        strides, dilations = [], []
        for i, (width, count) in enumerate(zip(STAGE_WIDTHS, blocks)):
            stride = 1 if i == 0 else 2
            # Dilate instead of striding once the output stride is reached (torchvision semantics).
            dilate = stride > 1 and stride_so_far >= output_stride
            if not dilate:
                stride_so_far *= stride
            layer = self._make_layer(block, width, count, stride, dilate, multi_grid if i == 3 else None)
            setattr(self, f"layer{i + 1}", layer)
            strides.append(stride_so_far)
            dilations.append(self._dilation)
        del self._inplanes
        self.stage_dilations = tuple(dilations)
        self.out_channels = (64,) + tuple(w * block.expansion for w in STAGE_WIDTHS)
        self.strides = (2,) + tuple(strides)
        self._init_weights()

    def _make_layer(
        self, block: type, planes: int, count: int, stride: int, dilate: bool, multi_grid: tuple[int, ...] | None
    ) -> nn.Sequential:
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        rate = self._dilation
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        if multi_grid is None:
            first = block(self._inplanes, planes, stride, downsample, dilation=rate, first_dilation=previous_dilation)
            rates = [rate] * (count - 1)
        else:
            unit_rate = rate * multi_grid[0]
            first = block(self._inplanes, planes, stride, downsample, dilation=unit_rate, first_dilation=unit_rate)
            rates = [rate * unit for unit in multi_grid[1:]]
        self._inplanes = planes * block.expansion
        return nn.Sequential(first, *(block(self._inplanes, planes, dilation=r) for r in rates))

    def _init_weights(self) -> None:
        # torchvision's initialisation (He et al. ICCV 2015 for convs; BN to identity).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        c1 = self.layer1(self.maxpool(stem))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [stem, c1, c2, c3, c4]

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Prepare a torchvision/timm ResNet checkpoint: drop the ImageNet classifier (``fc.*``) and, when
        this encoder takes other than 3 input channels, adapt ``conv1.weight`` (1 channel: sum over RGB;
        n channels: RGB repeated cyclically and scaled by 3/n, which keeps the activation scale)."""
        state = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        weight = state.get("conv1.weight")
        wanted = self.conv1.in_channels
        if weight is not None and weight.shape[1] == 3 and wanted != 3:
            if wanted == 1:
                state["conv1.weight"] = weight.sum(dim=1, keepdim=True)
            else:
                repeats = -(-wanted // 3)
                state["conv1.weight"] = weight.repeat(1, repeats, 1, 1)[:, :wanted] * (3.0 / wanted)
        return state


def resnet(
    *, depth: int, in_channels: int = 3, output_stride: int = 32, multi_grid: Sequence[int] | None = None
) -> ResNet:
    """Builder behind ``resnet18/34/50/101``; see ``ResNet``."""
    return ResNet(depth, in_channels=in_channels, output_stride=output_stride, multi_grid=multi_grid)


for _depth in RESNET_DEPTHS:
    register_encoder(f"resnet{_depth}", kind="resnet", depth=_depth)(resnet)


PAPER_MULTI_GRID = (1, 2, 4)  # DeepLab v3 Sec. 3.2, for a last stage of three blocks


def build_dilated_resnet(
    name: str, *, in_channels: int, output_stride: int, multi_grid: Sequence[int] | None = None
) -> ResNet:
    """Build a registered ResNet encoder for a segmentation head, with a clear error for a non-ResNet
    name (the heads' ``output_stride``/``multi_grid`` options only exist on ResNets).

    The paper's multi-grid ``(1, 2, 4)`` is defined for a three-block last stage; on ResNet-18, whose
    layer4 has two blocks, its first two rates ``(1, 2)`` are used. Any other length must match."""
    valid = sorted(n for n, e in ENCODERS.items() if e.kind == "resnet")
    if name not in valid:
        raise ValueError(f"encoder must be a ResNet ({', '.join(valid)}), got {name!r}")
    if multi_grid is not None and tuple(multi_grid) == PAPER_MULTI_GRID:
        last_stage_blocks = RESNET_DEPTHS[ENCODERS[name].defaults["depth"]][1][3]
        multi_grid = PAPER_MULTI_GRID[:last_stage_blocks]
    return build_encoder(name, in_channels=in_channels, output_stride=output_stride, multi_grid=multi_grid)
