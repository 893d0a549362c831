"""PSPNet (Zhao, Shi, Qi, Wang, Jia. Pyramid Scene Parsing Network. CVPR 2017).

A dilated ResNet (output stride 8, Sec. 3.2) feeds the pyramid pooling module (Sec. 3.2, Fig. 3): the
feature map is average-pooled into 1x1, 2x2, 3x3 and 6x6 bins, each level reduced by a 1x1 conv (BN, ReLU)
to 1/N of the input channels (N levels), upsampled bilinearly and concatenated with the feature itself;
a 3x3 conv-BN-ReLU (512), dropout 0.1 and a 1x1 classifier produce the scores, upsampled bilinearly to the
input. A deeply supervised auxiliary loss on layer3 (res4b22 in the paper, Sec. 3.3) is weighted 0.4.

The concatenation order (feature first, then bins 1, 2, 3, 6) and layer layout equal MMSegmentation's
``PSPHead`` and the authors' Caffe prototxt. Deviation, stated: the paper's ResNet has a three-conv 3x3 stem
(MMSeg's ResNetV1c); ours is torchvision's 7x7 stem so torchvision/timm ImageNet weights load.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segbench.models.architectures.aspp import PooledBatchNorm2d
from segbench.models.blocks import ConvBNReLU, FCNHead, SegmentationModel, resize
from segbench.models.encoders.dilated import build_dilated_encoder
from segbench.models.registry import register_model

__all__ = ["PyramidPooling", "PSPNet", "pspnet"]

AUX_WEIGHT = 0.4  # the auxiliary loss of Sec. 3.3, weighted 0.4 as chosen by the paper's ablation (Sec. 4)


class PyramidPooling(nn.Module):
    """Pyramid pooling module: ``[x, up(conv(pool_b(x))) for b in pool_bins]`` concatenated."""

    def __init__(self, in_channels: int, pool_bins: Sequence[int], channels: int):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(bins),
                nn.Conv2d(in_channels, channels, 1, bias=False),
                # the 1x1 bin has one value per channel and image: safe for a training batch of one
                PooledBatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )
            for bins in pool_bins
        )
        self.out_channels = in_channels + len(self.stages) * channels

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x] + [resize(stage(x), x) for stage in self.stages], dim=1)


class PSPNet(SegmentationModel):
    """Encoder -> ``ppm`` -> ``bottleneck`` (3x3 conv-BN-ReLU 512) -> dropout 0.1 -> ``classifier`` ->
    bilinear upsampling; ``aux_head`` (FCN head) on the stage before last."""

    def __init__(self, encoder: nn.Module, num_classes: int, pool_bins: Sequence[int], aux_head: bool):
        super().__init__()
        self.encoder = encoder
        in_channels = encoder.out_channels[-1]
        self.ppm = PyramidPooling(in_channels, pool_bins, in_channels // len(pool_bins))
        self.bottleneck = ConvBNReLU(self.ppm.out_channels, 512, 3)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Conv2d(512, num_classes, 1)
        self.aux_head = FCNHead(encoder.out_channels[-2], num_classes) if aux_head else None
        self.aux_weight = AUX_WEIGHT if aux_head else 0.0

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        features = self.encoder(x)
        scores = self.classifier(self.dropout(self.bottleneck(self.ppm(features[-1]))))
        logits = resize(scores, x.shape[-2:])
        aux = None
        if self.aux_head is not None and self.training:
            aux = resize(self.aux_head(features[-2]), x.shape[-2:])
        return self._outputs(logits, aux)


@register_model(
    "pspnet",
    paper="Zhao, Shi, Qi, Wang, Jia. Pyramid Scene Parsing Network. CVPR 2017",
    year=2017,
    recipe="cnn",
    summary=(
        "A pyramid pooling module adds global and sub-region context (1x1, 2x2, 3x3, 6x6 bins) to a dilated "
        "ResNet's features before classifying every position."
    ),
    blocks=(
        "Dilated ResNet (output stride 8); pyramid pooling: average pools to 1/2/3/6 bins, 1x1 conv-BN-ReLU to "
        "C/4 each, upsampled and concatenated with the feature; 3x3 conv-BN-ReLU (512), dropout 0.1, 1x1 "
        "classifier, bilinear x8; auxiliary FCN head on layer3 with loss weight 0.4."
    ),
    strengths=(
        "Global scene context fixes confusions between similar classes (the paper's boat vs car) and keeps "
        "large regions consistent; the deep supervision eases optimisation of the deep dilated trunk."
    ),
    weaknesses=(
        "No skip connections: boundaries come from one 8x bilinear upsampling; coarse bins blur small objects; "
        "OS 8 dilated ResNet is memory-hungry and the 4096-channel 3x3 bottleneck alone has ~19M parameters."
    ),
)
def pspnet(
    *,
    num_classes: int,
    in_channels: int = 3,
    encoder: str = "resnet50",
    output_stride: int = 8,
    pool_bins: Sequence[int] = (1, 2, 3, 6),
    aux_head: bool = True,
) -> PSPNet:
    """PSPNet. ``pool_bins`` are the pyramid levels' bin counts per side (paper: 1, 2, 3, 6). ``encoder``: any
    encoder that takes ``output_stride`` (ResNet, MobileNetV3, EfficientNet)."""
    bins = tuple(int(b) for b in pool_bins)
    if not bins or min(bins) < 1:
        raise ValueError(f"pool_bins must be a non-empty sequence of positive integers, got {pool_bins}")
    backbone = build_dilated_encoder(encoder, in_channels=in_channels, output_stride=output_stride)
    return PSPNet(backbone, num_classes, bins, aux_head)
