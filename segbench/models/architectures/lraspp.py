"""LR-ASPP, Lite Reduced Atrous Spatial Pyramid Pooling (Howard et al. Searching for MobileNetV3. ICCV 2019,
Sec. 6.4 and Fig. 10), as torchvision's ``lraspp_mobilenet_v3_large``.

On the deepest features (MobileNetV3's last 1x1 conv, 960 channels, output stride 16 with the last stage
dilated) two branches: a 1x1 conv-BN-ReLU to 128 channels, and a global average pool, 1x1 conv and sigmoid
giving 128 channel weights (squeeze-and-excitation-like attention); their product is upsampled bilinearly
to the stride-8 features. Both that and the stride-8 features are classified by a 1x1 conv each and the
scores are summed, then upsampled bilinearly to the input.

Equal to torchvision's ``LRASPP`` function for function: module names ``cbr``/``scale``/``low_classifier``
/``high_classifier`` as its ``LRASPPHead``, the head's BatchNorm PyTorch's default (the backbone's has eps
0.001), and the stride-8 features read where torchvision reads them: the output of the stage's *first*
(strided) block (``feature_taps="first"``), not of its last. Parameter count with MobileNetV3-Large and 21
classes: 3,221,538, torchvision's documented ``num_params``.

Deviations from the paper, as torchvision: the paper's pooling branch is a 49x49 average pool with stride
(16, 20) (its Fig. 10, for 1024x2048 Cityscapes inputs); torchvision, and so this, pools globally.
"""

from __future__ import annotations

from torch import Tensor, nn

from segbench.models.blocks import SegmentationModel, resize
from segbench.models.encoders.dilated import build_dilated_encoder
from segbench.models.registry import ENCODERS, register_model

__all__ = ["LRASPP", "lraspp"]

LOW_LEVEL_STRIDE = 8  # the paper's and torchvision's "low" features


class LRASPP(SegmentationModel):
    """Encoder -> LR-ASPP head (``cbr`` x ``scale`` on the deepest features, upsampled to the stride-8
    features; ``low_classifier`` + ``high_classifier``) -> bilinear upsampling to the input."""

    def __init__(self, encoder: nn.Module, num_classes: int, inter_channels: int = 128):
        super().__init__()
        if LOW_LEVEL_STRIDE not in encoder.strides[:-1]:
            raise ValueError(f"LR-ASPP needs encoder features at stride {LOW_LEVEL_STRIDE}, got strides {encoder.strides}")
        self.encoder = encoder
        self.low_level = list(encoder.strides).index(LOW_LEVEL_STRIDE)  # the shallowest output at stride 8
        high_channels = encoder.out_channels[-1]
        self.cbr = nn.Sequential(
            nn.Conv2d(high_channels, inter_channels, 1, bias=False), nn.BatchNorm2d(inter_channels), nn.ReLU(inplace=True)
        )
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(high_channels, inter_channels, 1, bias=False), nn.Sigmoid())
        self.low_classifier = nn.Conv2d(encoder.out_channels[self.low_level], num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        features = self.encoder(x)
        low, high = features[self.low_level], features[-1]
        context = resize(self.cbr(high) * self.scale(high), low.shape[-2:])
        return resize(self.low_classifier(low) + self.high_classifier(context), x.shape[-2:])


@register_model(
    "lraspp",
    paper=(
        "Howard, Sandler, Chu, Chen, Chen, Tan, Wang, Zhu, Pang, Vasudevan, Le, Adam. Searching for MobileNetV3. "
        "ICCV 2019 (Sec. 6.4: Lite R-ASPP; torchvision's lraspp_mobilenet_v3_large)"
    ),
    year=2019,
    recipe="cnn",
    summary=(
        "A segmentation head for mobile CPUs: global-pooling attention on 1x1-reduced deep features plus a 1x1 "
        "classifier on stride-8 features, on MobileNetV3-Large at output stride 16."
    ),
    blocks=(
        "MobileNetV3-Large (last stage dilated, OS 16); 1x1 conv-BN-ReLU (128) times a global-pool 1x1 conv "
        "sigmoid gate, upsampled to stride 8; 1x1 classifiers on it and on the stride-8 features, summed; "
        "bilinear x8."
    ),
    strengths=(
        "About 3.2M parameters, a fraction of DeepLab's, and only 1x1 convs in "
        "the head, which quantize and run well on CPUs; layout identical to torchvision's, so its COCO weights "
        "convert."
    ),
    weaknesses=(
        "One skip level and a single global context vector: weaker on fine structures and multi-scale scenes "
        "than ASPP or UPerNet heads; the 1x1 low-level classifier sees only 40 channels of stride-8 features."
    ),
)
def lraspp(
    *,
    num_classes: int,
    in_channels: int = 3,
    encoder: str = "mobilenet_v3_large",
    output_stride: int = 16,
    feature_taps: str | None = None,
    inter_channels: int = 128,
) -> LRASPP:
    """LR-ASPP. ``feature_taps`` (MobileNetV3 encoders only): which block gives the stride-8 features,
    "first" (default: torchvision's) or "last" (the end of the stage, as timm/smp encoders return it)."""
    if feature_taps is not None and (encoder not in ENCODERS or ENCODERS[encoder].kind != "mobilenetv3"):
        raise ValueError(f"feature_taps applies to MobileNetV3 encoders only, not {encoder!r}")
    options = {}
    if encoder in ENCODERS and ENCODERS[encoder].kind == "mobilenetv3":
        options["feature_taps"] = feature_taps or "first"
    backbone = build_dilated_encoder(encoder, in_channels=in_channels, output_stride=output_stride, **options)
    return LRASPP(backbone, num_classes, inter_channels)
