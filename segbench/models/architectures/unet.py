"""U-Net (Ronneberger, Fischer, Brox. MICCAI 2015).

A contracting path of four levels (two 3x3 convs + ReLU, then 2x2 max-pooling), a bottleneck, and an
expanding path of four levels (2x2 up-convolution halving the channels, concatenation with the skip
feature of the same level, two 3x3 convs), then a 1x1 classifier (paper Fig. 1, Sec. 2).

``padding="valid"`` is the paper's network: unpadded convolutions, skips centre-cropped to the expanding
path, and the overlap-tile strategy (Sec. 2, Fig. 2): the input is mirrored at its borders so the smaller
output covers it, so logits come back at input resolution for any size. ``padding="same"`` (default) pads
every conv and the input to a multiple of 16, the form most toolkits use.

Deviation, stated: ``batch_norm=True`` (default) puts BatchNorm after each conv. The paper predates its
adoption; BN makes training from scratch robust to learning rate and batch size. ``batch_norm=False``
gives the paper's exact layer list.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.blocks import Encoder, SegmentationModel
from segbench.models.registry import register_model

__all__ = ["UNet", "UNetEncoder", "unet"]

LEVELS = 4  # poolings in the contracting path


class DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, padding: int, batch_norm: bool):
        layers: list[nn.Module] = []
        for i in range(2):
            layers.append(nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=padding, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UNetEncoder(Encoder):
    """The contracting path as an encoder: five outputs (four levels and the bottleneck), strides 1..16."""

    def __init__(self, in_channels: int = 3, base_width: int = 64, padding: str = "same", batch_norm: bool = True):
        super().__init__()
        widths = [base_width * 2**i for i in range(LEVELS + 1)]
        pad = 1 if padding == "same" else 0
        self.blocks = nn.ModuleList()
        for width in widths:
            self.blocks.append(DoubleConv(in_channels, width, pad, batch_norm))
            in_channels = width
        self.pool = nn.MaxPool2d(2, 2)
        self.out_channels = tuple(widths)
        self.strides = tuple(2**i for i in range(LEVELS + 1))

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            features.append(x)
        return features


def _center_crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


def valid_output_size(size: int) -> int | None:
    """Output side of the valid-padding U-Net for an input side, or None if the input does not fit
    (a pooling of an odd size, or a level that shrinks to nothing)."""
    for _ in range(LEVELS):
        size -= 4
        if size <= 0 or size % 2:
            return None
        size //= 2
    size -= 4
    if size <= 0:
        return None
    for _ in range(LEVELS):
        size = size * 2 - 4
    return size


def valid_input_size(min_output: int) -> int:
    """Smallest valid input side whose output is at least ``min_output`` (e.g. 388 -> 572)."""
    size = 1
    while (out := valid_output_size(size)) is None or out < min_output:
        size += 1
    return size


def _mirror_pad(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    # Reflect padding needs pad < size: grow in steps so small inputs can be mirrored by 92+ pixels.
    while top or bottom or left or right:
        h, w = x.shape[-2:]
        step = [min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1)]
        if max(step) == 0:  # a 1-pixel side cannot be reflected
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = left - step[0], right - step[1], top - step[2], bottom - step[3]
    return x


class UNet(SegmentationModel):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        base_width: int = 64,
        padding: str = "same",
        batch_norm: bool = True,
    ):
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        self.padding = padding
        self.encoder = UNetEncoder(in_channels, base_width, padding, batch_norm)
        widths = self.encoder.out_channels
        pad = 1 if padding == "same" else 0
        self.up_convs = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for deep, skip in zip(widths[:0:-1], widths[-2::-1]):
            self.up_convs.append(nn.ConvTranspose2d(deep, deep // 2, kernel_size=2, stride=2))
            self.up_blocks.append(DoubleConv(deep // 2 + skip, skip, pad, batch_norm))
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def _decode(self, x: Tensor) -> Tensor:
        *skips, x = self.encoder(x)
        for up, block, skip in zip(self.up_convs, self.up_blocks, reversed(skips)):
            x = up(x)
            x = block(torch.cat([_center_crop(skip, x.shape[-2:]), x], dim=1))
        return self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        divisor = 2**LEVELS
        if self.padding == "same":
            pad_h, pad_w = (-h) % divisor, (-w) % divisor
            if pad_h or pad_w:
                x = _mirror_pad(x, 0, pad_h, 0, pad_w)
            return self._decode(x)[..., :h, :w]
        # Overlap-tile: mirror the borders so that the valid output covers the whole input.
        in_h, in_w = valid_input_size(h), valid_input_size(w)
        margin_h, margin_w = (in_h - valid_output_size(in_h)) // 2, (in_w - valid_output_size(in_w)) // 2
        x = _mirror_pad(x, margin_h, in_h - h - margin_h, margin_w, in_w - w - margin_w)
        return self._decode(x)[..., :h, :w]


@register_model(
    "unet",
    paper="Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. MICCAI 2015",
    year=2015,
    recipe="cnn",
    summary="A symmetric encoder-decoder whose skip connections concatenate full-resolution encoder features "
    "into the decoder, so localisation and context are learned together from very few images.",
    blocks="Four levels of two 3x3 conv + ReLU with 2x2 max-pooling; a 1024-channel bottleneck; 2x2 "
    "up-convolutions halving channels; skip concatenation; 1x1 classifier; overlap-tile inference.",
    strengths="Sharp boundaries and thin structures from the full-resolution skips; trains from scratch on "
    "small datasets; no pretrained backbone needed; simple and fast at moderate width.",
    weaknesses="Receptive field limited by four poolings (weak global context on large images); the "
    "full-resolution decoder costs memory and FLOPs that grow with width squared; no ImageNet encoder by default.",
)
def unet(
    *,
    num_classes: int,
    in_channels: int = 3,
    base_width: int = 64,
    padding: str = "same",
    batch_norm: bool = True,
) -> UNet:
    """U-Net; ``base_width`` channels at the first level, doubling per level (64 -> 1024 in the paper)."""
    return UNet(num_classes, in_channels, base_width, padding, batch_norm)
