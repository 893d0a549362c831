"""DeepLab v2, v3 and v3+ on dilated ResNets (DeepLab v1 on VGG lives in ``deeplab_v1.py``).

- v2 (Chen et al. TPAMI 2018, Sec. 3.2 and Fig. 4 "ASPP-L"): ResNet-101 at output stride 8, four parallel
  3x3 atrous convs (rates 6/12/18/24) each straight to class scores, summed, bilinearly upsampled; an
  optional fully connected CRF refines the scores at inference (Sec. 3.3): ``crf="dense"`` is the paper's
  (``dense_crf.DenseCRF``, Krähenbühl's code through pydensecrf2), ``crf="conv"`` the local-window
  approximation ``crf.ConvCRF``.
- v3 (Chen et al. 2017, "Rethinking Atrous Convolution", Sec. 3.3): ASPP with BN and image-level
  features on a ResNet whose last stage uses multi-grid rates (1, 2, 4) (Sec. 3.2), then torchvision's
  ``DeepLabHead`` tail (3x3 conv-BN-ReLU, 1x1 classifier); optional auxiliary FCN head on layer3.
- v3+ (Chen et al. ECCV 2018, Sec. 3.2 and Fig. 2): the v3 encoder at output stride 16 plus a decoder that
  fuses the 4x-upsampled ASPP output with 48-channel reduced stride-4 features, refines them with two
  3x3 convs and upsamples 4x again; ``separable=True`` uses atrous depthwise-separable convs in ASPP and
  decoder, as the paper's Xception variant.

Every model reads channel counts off ``encoder.out_channels``; the backbone is any registered ResNet, or
MobileNetV3 / EfficientNet (``segbench.models.encoders.dilated``; ``multi_grid`` exists on ResNets only).

Deviations, stated:

- The ResNets are torchvision's ("v1.5": stride on the 3x3 conv, 7x7 stem) so ImageNet weights load; the
  papers used the Caffe/TF ResNet-101 (stride on the first 1x1 conv).
- v2: the paper's multi-scale input training (MSC, max-fused scales 1, 0.75, 0.5) is not implemented; the
  CRF is the paper's with ``crf="dense"`` and ConvCRF's local-window approximation with ``crf="conv"``.
- v3: the paper goes from the 1x1 projection straight to the 1x1 classifier; torchvision's ``DeepLabHead``
  puts a 3x3 conv-BN-ReLU (256) in between and drops 50% after the projection. We keep torchvision's head
  (and so its parameter count, 42,004,074 for ResNet-50 with the auxiliary head) so its weights convert.
- v3 and v3+: with a training batch of one image the image-pooling branch's BN uses its running
  statistics (``aspp.PooledBatchNorm2d``); torchvision raises there.
- v3+: ResNet backbones only (no aligned Xception); dropout 0.1 after the ASPP projection as in the
  reference TF implementation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segbench.models.architectures.aspp import ASPP, SeparableConvBNReLU, scaled_rates
from segbench.models.blocks import ConvBNReLU, FCNHead, SegmentationModel, resize
from segbench.models.encoders.dilated import build_dilated_encoder
from segbench.models.registry import register_model

__all__ = ["PAPER_CRF_V2", "ASPPL", "DeepLabV2", "DeepLabV3", "DeepLabV3Plus", "deeplabv2", "deeplabv3", "deeplabv3plus"]

AUX_WEIGHT = 0.5  # torchvision's reference training: loss = out + 0.5 * aux
IMAGENET_INTENSITY_SCALE = 57.6  # 255 * ImageNet's mean std (0.226): normalised units -> 0..255 levels
# The dense CRF's kernels released with DeepLab v2 for ResNet-101 on VOC 2012 (its release notes as
# reimplementations quote them: bi_w = 4, bi_xy_std = 67, bi_rgb_std = 3, pos_w = 3, pos_xy_std = 1; 10
# iterations). The paper (Sec. 4.1) searches w1 in [3, 6], sigma_alpha in [30, 100], sigma_beta in [3, 6].
PAPER_CRF_V2 = {"theta_alpha": 67.0, "theta_beta": 3.0, "theta_gamma": 1.0, "w_appearance": 4.0, "w_smoothness": 3.0}


def _check_rates(rates: Sequence[int]) -> tuple[int, ...]:
    rates = tuple(int(r) for r in rates)
    if not rates or min(rates) < 1:
        raise ValueError(f"atrous_rates must be a non-empty sequence of positive integers, got {rates}")
    return rates


class ASPPL(nn.Module):
    """DeepLab v2's ASPP-L for ResNet: one 3x3 atrous conv per rate, each producing class scores, summed
    (TPAMI Sec. 3.2 and Fig. 4; rates 6/12/18/24 from the ASPP-L experiments of Sec. 4.1). On VGG each
    branch is an fc6-fc7-fc8 stack; on ResNet-101, as in the released model, a single conv."""

    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int]):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate) for rate in atrous_rates
        )
        for conv in self.branches:
            # The reference prototxt initialises the ASPP classifiers from N(0, 0.01), biases 0.
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabV2(SegmentationModel):
    """Encoder -> ASPP-L (named ``classifier``: its branches are the final class-score convs) ->
    bilinear upsampling -> optional CRF in eval mode."""

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        atrous_rates: Sequence[int],
        crf: nn.Module | None = None,
        crf_intensity_scale: float = 1.0,
    ):
        super().__init__()
        self.encoder = encoder
        self.classifier = ASPPL(encoder.out_channels[-1], num_classes, atrous_rates)
        self.crf = crf
        self.crf_intensity_scale = crf_intensity_scale

    def forward(self, x: Tensor) -> Tensor:
        logits = resize(self.classifier(self.encoder(x)[-1]), x.shape[-2:])
        if self.crf is not None and not self.training:
            # The paper trains the network and the CRF separately; the CRF only post-processes.
            # The CRF's colour kernel works in 8-bit intensity units; the input is normalised.
            logits = self.crf(logits, x * self.crf_intensity_scale)
        return logits


class DeepLabV3(SegmentationModel):
    """Encoder -> ASPP -> 3x3 conv-BN-ReLU -> 1x1 ``classifier`` -> bilinear upsampling (torchvision's
    ``DeepLabHead`` split into ``aspp``/``head``/``classifier``); optional ``aux_head`` on layer3."""

    def __init__(self, encoder: nn.Module, num_classes: int, atrous_rates: Sequence[int], aux_head: bool):
        super().__init__()
        self.encoder = encoder
        self.aspp = ASPP(encoder.out_channels[-1], atrous_rates, 256, dropout=0.5)
        self.head = ConvBNReLU(256, 256, 3)
        self.classifier = nn.Conv2d(256, num_classes, 1)
        self.aux_head = FCNHead(encoder.out_channels[-2], num_classes) if aux_head else None
        self.aux_weight = AUX_WEIGHT if aux_head else 0.0

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        features = self.encoder(x)
        logits = resize(self.classifier(self.head(self.aspp(features[-1]))), x.shape[-2:])
        aux = None
        if self.aux_head is not None and self.training:
            aux = resize(self.aux_head(features[-2]), x.shape[-2:])
        return self._outputs(logits, aux)


class DeepLabV3Plus(SegmentationModel):
    """Encoder -> ASPP -> decoder (Fig. 2): 1x1 conv to 48 channels on the stride-4 features (layer1),
    concatenated with the upsampled ASPP output, two 3x3 convs (256), 1x1 ``classifier``, bilinear
    upsampling to the input."""

    low_level_channels = 48  # Sec. 4.1: 48 channels beat 8..64 (Table 1)

    def __init__(
        self, encoder: nn.Module, num_classes: int, atrous_rates: Sequence[int], separable: bool, aux_head: bool
    ):
        super().__init__()
        self.encoder = encoder
        # The reference implementation drops 10% after the ASPP projection (keep_prob 0.9).
        self.aspp = ASPP(encoder.out_channels[-1], atrous_rates, 256, dropout=0.1, separable=separable)
        self.reduce = ConvBNReLU(encoder.out_channels[1], self.low_level_channels, 1)
        fused = 256 + self.low_level_channels
        if separable:
            self.refine = nn.Sequential(SeparableConvBNReLU(fused, 256), SeparableConvBNReLU(256, 256))
        else:
            self.refine = nn.Sequential(ConvBNReLU(fused, 256, 3), ConvBNReLU(256, 256, 3))
        self.classifier = nn.Conv2d(256, num_classes, 1)
        self.aux_head = FCNHead(encoder.out_channels[-2], num_classes) if aux_head else None
        self.aux_weight = AUX_WEIGHT if aux_head else 0.0

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        features = self.encoder(x)
        low_level = self.reduce(features[1])
        context = resize(self.aspp(features[-1]), low_level.shape[-2:])
        fused = self.refine(torch.cat([context, low_level], dim=1))
        logits = resize(self.classifier(fused), x.shape[-2:])
        aux = None
        if self.aux_head is not None and self.training:
            aux = resize(self.aux_head(features[-2]), x.shape[-2:])
        return self._outputs(logits, aux)


@register_model(
    "deeplabv2",
    paper=(
        "Chen, Papandreou, Kokkinos, Murphy, Yuille. DeepLab: Semantic Image Segmentation with Deep "
        "Convolutional Nets, Atrous Convolution, and Fully Connected CRFs. IEEE TPAMI 40(4), 2018 (arXiv 2016)"
    ),
    year=2018,
    recipe="cnn",
    summary=(
        "Atrous Spatial Pyramid Pooling: parallel atrous convs with rates 6/12/18/24 on a dilated ResNet-101 "
        "(output stride 8) score the classes at several fields of view and are summed."
    ),
    blocks=(
        "Dilated ResNet keeps 1/8 resolution with ImageNet weights intact; ASPP-L's four 3x3 class-score "
        "convs see 13 to 49 pixels of the stride-8 map; bilinear upsampling; optionally at inference the paper's "
        "fully connected CRF (crf=dense) or its local-window approximation ConvCRF (crf=conv)."
    ),
    strengths=(
        "Very light head (four convs straight to classes) on a strong backbone; multi-scale context without "
        "image pyramids; the CRF sharpens boundaries the 8x upsampling blurs."
    ),
    weaknesses=(
        "No BN or nonlinearity in the head and no image-level context; large-rate 3x3 convs degenerate towards "
        "1x1 on small maps (v3 Sec. 3.3); the paper's multi-scale input fusion (MSC) is not implemented here; "
        "OS 8 ResNet-101 is slow and memory-hungry."
    ),
)
def deeplabv2(
    *,
    num_classes: int,
    in_channels: int = 3,
    encoder: str = "resnet101",
    output_stride: int = 8,
    atrous_rates: Sequence[int] | None = None,
    crf: str | bool = "none",
    crf_iterations: int = 10,
    crf_window: int = 7,
    crf_intensity_scale: float = IMAGENET_INTENSITY_SCALE,
) -> DeepLabV2:
    """DeepLab v2 (ASPP-L). ``atrous_rates`` default (6, 12, 18, 24) at OS 8, rescaled at other strides.
    ``crf`` refines eval-mode logits: ``"dense"``, the paper's fully connected CRF with the released
    ResNet-101 kernels ``PAPER_CRF_V2`` (needs pydensecrf2); ``"conv"``, ``ConvCRF`` over a ``crf_window``
    neighbourhood with ConvCRF's kernel defaults; ``"none"`` (``True``/``False`` mean conv/none). Either
    runs ``crf_iterations`` mean-field steps (10 in the paper), guided by the input times ``crf_intensity_scale``:
    normalised images ``(x/255 - mean)/std`` return to 0..255 colour differences when multiplied by
    ``255 * std`` (ImageNet std ~0.226 gives the default 57.6)."""
    backbone = build_dilated_encoder(encoder, in_channels=in_channels, output_stride=output_stride)
    rates = _check_rates(atrous_rates) if atrous_rates is not None else scaled_rates((6, 12, 18, 24), 8, output_stride)
    # Imported here so this module loads without the CRF module.
    from segbench.models.architectures.crf import build_crf

    crf_module = build_crf(crf, iterations=crf_iterations, window=crf_window, dense_kernels=PAPER_CRF_V2)
    return DeepLabV2(backbone, num_classes, rates, crf_module, crf_intensity_scale)


@register_model(
    "deeplabv3",
    paper=(
        "Chen, Papandreou, Schroff, Adam. Rethinking Atrous Convolution for Semantic Image Segmentation. "
        "arXiv:1706.05587, 2017"
    ),
    year=2017,
    recipe="cnn",
    summary=(
        "ASPP with batch norm and an image-level pooling branch on a dilated ResNet with multi-grid rates; "
        "no CRF needed."
    ),
    blocks=(
        "Dilated ResNet (OS 8 here, multi-grid 1/2/4 in the last stage); ASPP: 1x1 + three 3x3 atrous (12/24/36 "
        "at OS 8) + global-pool branch, 256 channels each with BN, 1x1 projection with dropout 0.5; 3x3 "
        "conv-BN-ReLU (torchvision's addition), 1x1 classifier, bilinear x8; optional auxiliary FCN head on "
        "layer3 (weight 0.5)."
    ),
    strengths=(
        "Strong context aggregation at several scales plus global context; BN in the head makes it train "
        "stably; layout identical to torchvision's, so its weights convert."
    ),
    weaknesses=(
        "Output decoded by one 8x bilinear upsampling, so thin structures and boundaries are coarse; OS 8 "
        "dilated stages cost ~4x the FLOPs of OS 32; the pooling branch's BN needs batch > 1 for statistics."
    ),
)
def deeplabv3(
    *,
    num_classes: int,
    in_channels: int = 3,
    encoder: str = "resnet50",
    output_stride: int = 8,
    atrous_rates: Sequence[int] | None = None,
    multi_grid: Sequence[int] | None = (1, 2, 4),
    aux_head: bool = False,
) -> DeepLabV3:
    """DeepLab v3. ``atrous_rates`` default (6, 12, 18) at OS 16, doubled at OS 8. ``multi_grid``: one unit
    rate per block of layer4 ((1, 2, 4) becomes (1, 2) on resnet18's two blocks); None gives torchvision's
    plain dilation (MobileNetV3/EfficientNet encoders ignore the default). On ``mobilenet_v3_large`` at
    ``output_stride=16`` without the auxiliary head the model has torchvision's
    ``deeplabv3_mobilenet_v3_large`` parameter count less that model's auxiliary head."""
    backbone = build_dilated_encoder(
        encoder, in_channels=in_channels, output_stride=output_stride, multi_grid=multi_grid
    )
    rates = _check_rates(atrous_rates) if atrous_rates is not None else scaled_rates((6, 12, 18), 16, output_stride)
    return DeepLabV3(backbone, num_classes, rates, aux_head)


@register_model(
    "deeplabv3plus",
    paper=(
        "Chen, Zhu, Papandreou, Schroff, Adam. Encoder-Decoder with Atrous Separable Convolution for Semantic "
        "Image Segmentation. ECCV 2018"
    ),
    year=2018,
    recipe="cnn",
    summary=(
        "DeepLab v3 as encoder plus a light decoder that fuses stride-4 features, recovering boundaries that "
        "v3's single upsampling loses, at output stride 16."
    ),
    blocks=(
        "Dilated ResNet at OS 16 (multi-grid 1/2/4); ASPP (6/12/18 + image pooling, 256 ch); decoder: 1x1 conv "
        "of layer1 to 48 ch, concat with the 4x-upsampled ASPP output, two 3x3 convs (256), 1x1 classifier, "
        "4x bilinear; optional depthwise-separable convs in ASPP and decoder."
    ),
    strengths=(
        "Sharper object boundaries than v3 at a quarter of its OS-8 cost; OS 16 keeps memory moderate; "
        "separable convs cut the head's FLOPs with little accuracy loss (paper Table 5)."
    ),
    weaknesses=(
        "Only one skip level (stride 4), so very fine detail still depends on bilinear upsampling; the paper's "
        "best numbers use an aligned Xception backbone not provided here (ResNet only)."
    ),
)
def deeplabv3plus(
    *,
    num_classes: int,
    in_channels: int = 3,
    encoder: str = "resnet50",
    output_stride: int = 16,
    atrous_rates: Sequence[int] | None = None,
    multi_grid: Sequence[int] | None = (1, 2, 4),
    separable: bool = False,
    aux_head: bool = False,
) -> DeepLabV3Plus:
    """DeepLab v3+. ``atrous_rates`` default (6, 12, 18) at OS 16, doubled at OS 8; ``multi_grid`` as for
    ``deeplabv3``."""
    backbone = build_dilated_encoder(
        encoder, in_channels=in_channels, output_stride=output_stride, multi_grid=multi_grid
    )
    rates = _check_rates(atrous_rates) if atrous_rates is not None else scaled_rates((6, 12, 18), 16, output_stride)
    return DeepLabV3Plus(backbone, num_classes, rates, separable, aux_head)
