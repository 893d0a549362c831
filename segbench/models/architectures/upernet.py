"""UPerNet (Xiao, Liu, Zhou, Jiang, Sun. Unified Perceptual Parsing for Scene Understanding. ECCV 2018)
with a Swin Transformer backbone, the segmentation setup of the Swin paper (Liu et al. ICCV 2021, Sec. 4.3).

The head (UPerNet Sec. 3.2, Fig. 4; MMSegmentation's ``UPerHead``, which the Swin paper used):

- a Pyramid Pooling Module (PSPNet) on the deepest stage: average pooling to ``pool_bins`` (1, 2, 3, 6),
  a 1x1 conv-BN-ReLU to ``channels`` per bin, bilinear upsampling, concatenated with the stage itself
  and fused by a 3x3 conv-BN-ReLU; this is the top of the feature pyramid;
- an FPN (Lin et al. CVPR 2017) over the other stages: 1x1 lateral conv-BN-ReLU, top-down bilinear
  upsampling and addition, then a 3x3 conv-BN-ReLU per level;
- fusion: every level upsampled to stride 4, concatenated, a 3x3 conv-BN-ReLU ("fuse"), dropout 0.1
  and the 1x1 ``classifier``;
- an auxiliary FCN head on stage 3 (a 3x3 conv-BN-ReLU to 256 channels, dropout, 1x1 conv), loss weight
  0.4, as in the Swin paper's MMSegmentation configuration.

Logits are upsampled bilinearly to the input size. The Swin encoder pads internally, so any input size
works; ResNet encoders (UPerNet's own paper used ResNet-50/101) take any size as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

import segbench.models.encoders  # noqa: F401  (registers the encoders ``encoder`` may name)
from segbench.models.blocks import ConvBNReLU, FCNHead, SegmentationModel, resize
from segbench.models.registry import ENCODERS, build_encoder, register_model

__all__ = ["UPerHead", "UPerNet", "upernet"]

TRANSFORMER_ENCODER_KINDS = ("swin", "mit")
SWIN_OPTIONS = ("embed_dim", "depths", "num_heads", "window_size", "drop_path_rate")


class UPerHead(nn.Module):
    """PPM on the deepest feature + FPN over the rest, fused at the finest level; returns ``channels``
    features at the stride of ``features[0]`` (before dropout and the classifier)."""

    def __init__(self, in_channels: Sequence[int], channels: int = 512, pool_bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        in_channels = tuple(in_channels)
        if len(in_channels) < 2:
            raise ValueError(f"UPerHead needs at least two feature levels, got channels {in_channels}")
        deepest = in_channels[-1]
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(bins), ConvBNReLU(deepest, channels, 1)) for bins in pool_bins
        )
        self.ppm_bottleneck = ConvBNReLU(deepest + len(pool_bins) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = ConvBNReLU(len(in_channels) * channels, channels, 3)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        deepest = features[-1]
        pooled = [resize(branch(deepest), deepest) for branch in self.ppm]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        laterals.append(self.ppm_bottleneck(torch.cat([deepest, *pooled], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1])
        levels = [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        return self.fuse(torch.cat([levels[0]] + [resize(x, levels[0]) for x in levels[1:]], dim=1))


class UPerNet(SegmentationModel):
    """Encoder + ``UPerHead`` + classifier, with the optional auxiliary FCN head on the third of the
    four feature levels the head uses (the encoder's last four outputs)."""

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        *,
        channels: int = 512,
        pool_bins: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        aux_head: bool = True,
        aux_channels: int = 256,
        aux_weight: float = 0.4,
    ):
        super().__init__()
        self.encoder = encoder
        strides = tuple(encoder.strides[-4:])
        if len(strides) < 4 or list(strides) != sorted(set(strides)):
            raise ValueError(
                f"UPerNet needs an encoder with four outputs of increasing stride, got strides {encoder.strides}"
            )
        feature_channels = tuple(encoder.out_channels[-4:])
        self.decode_head = UPerHead(feature_channels, channels, pool_bins)
        self.dropout = nn.Dropout2d(dropout)  # MMSegmentation's decode heads drop whole channels
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.aux_head = FCNHead(feature_channels[2], num_classes, channels=aux_channels) if aux_head else None
        self.aux_weight = aux_weight if aux_head else 0.0

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        features = self.encoder(x)[-4:]
        logits = resize(self.classifier(self.dropout(self.decode_head(features))), x.shape)
        aux = None
        if self.aux_head is not None and self.training:
            aux = resize(self.aux_head(features[2]), x.shape)
        return self._outputs(logits, aux)


@register_model(
    "upernet",
    paper="Liu, Lin, Cao, Hu, Wei, Zhang, Lin, Guo. Swin Transformer: Hierarchical Vision Transformer using "
    "Shifted Windows. ICCV 2021 (segmentation head: Xiao, Liu, Zhou, Jiang, Sun. Unified Perceptual Parsing "
    "for Scene Understanding. ECCV 2018)",
    year=2021,
    recipe="transformer",
    summary="A hierarchical vision transformer whose self-attention stays inside local windows that shift "
    "between consecutive blocks, giving linear cost in image size and a CNN-like feature pyramid, decoded by "
    "UPerNet's pyramid pooling + FPN head.",
    blocks="Swin stages: (shifted) window attention with a relative position bias and patch merging between "
    "stages give 4 levels at strides 4-32, like a ResNet, so any FPN-style head attaches. UPerNet head: PPM "
    "global context on the deepest level, FPN top-down fusion of all levels, everything fused at stride 4; "
    "an auxiliary FCN head on stage 3 eases training.",
    strengths="Strong accuracy at scale (Swin-T 44.5 / Swin-B 48.1 mIoU on ADE20K in the paper); windows keep "
    "attention cost linear in pixels, so 512x512 crops train on one GPU; the stride-4 fusion gives sharper "
    "boundaries than stride-8 heads; works for any input size (internal padding).",
    weaknesses="Heavy: 60M (T) to 121M (B) parameters, most of the head's in the 3x3 convs on 512 channels at "
    "stride 4, which are slow on large images; needs ImageNet pretraining and AdamW with long schedules "
    "(160k iterations) to shine, and overfits small datasets from scratch; window size fixes the attention "
    "range, so very small feature maps are padded up to a window.",
)
def upernet(
    *,
    num_classes: int,
    in_channels: int = 3,
    encoder: str = "swin_t",
    channels: int = 512,
    pool_bins: Sequence[int] = (1, 2, 3, 6),
    dropout: float = 0.1,
    aux_head: bool = True,
    aux_channels: int = 256,
    embed_dim: int | None = None,
    depths: Sequence[int] | None = None,
    num_heads: Sequence[int] | None = None,
    window_size: int | None = None,
    drop_path_rate: float | None = None,
) -> UPerNet:
    """UPerNet on ``encoder`` (``swin_t``/``swin_s``/``swin_b``, or a ResNet such as ``resnet50`` for the
    UPerNet paper's CNN setup, or a MobileNetV3/EfficientNet: the last four outputs at strides 4-32). ``channels``: the head's width (512 in both papers). The Swin options
    (``embed_dim``, ``depths``, ``num_heads``, ``window_size``, ``drop_path_rate``) default to the
    variant's and are rejected for other encoders.

    The instance's ``recipe`` tells the optimizer defaults which paper to follow: "transformer"
    (AdamW) for Swin/MiT encoders, "cnn" (SGD) for ResNets; the registry lists the Swin setup.
    """
    if encoder not in ENCODERS:
        build_encoder(encoder)  # raises the registry's error, which lists the valid names
    kind = ENCODERS[encoder].kind
    swin_options = {
        name: value
        for name, value in zip(SWIN_OPTIONS, (embed_dim, depths, num_heads, window_size, drop_path_rate))
        if value is not None
    }
    if swin_options and kind != "swin":
        raise ValueError(
            f"options {sorted(swin_options)} only apply to Swin encoders (swin_t, swin_s, swin_b), not {encoder!r}"
        )
    backbone = build_encoder(encoder, in_channels=in_channels, **swin_options)
    model = UPerNet(
        backbone,
        num_classes,
        channels=channels,
        pool_bins=pool_bins,
        dropout=dropout,
        aux_head=aux_head,
        aux_channels=aux_channels,
    )
    model.recipe = "transformer" if kind in TRANSFORMER_ENCODER_KINDS else "cnn"
    return model
