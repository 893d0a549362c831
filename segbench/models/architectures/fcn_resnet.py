"""torchvision's FCN, registered as ``fcn`` (class ``FCNResNet``): a dilated ResNet with one conv head, as
torchvision's ``fcn_resnet50``/``fcn_resnet101``.

The FCN idea (Long, Shelhamer, Darrell. CVPR 2015): a classification network made fully convolutional,
scoring every position and upsampling the scores to the image. The paper's own nets, VGG16 with skip layers
(``fcn32s``/``fcn16s``/``fcn8s``, class ``FCNVGG``), live in ``fcn_vgg.py``. This variant replaces skips with dilation: the ResNet's last two
stages keep stride 8 (output_stride 8), one 3x3 conv-BN-ReLU to C/4 channels with dropout 0.1 and a 1x1
classifier score the classes, and bilinear upsampling returns them at input size. torchvision's reference
training adds the same head on layer3 as an auxiliary loss with weight 0.5 (``aux_head=True``).

Parameter layout equals torchvision's FCN: with ResNet-50, 21 classes and the auxiliary head the model has
exactly 35,322,218 parameters (torchvision's documented ``num_params``).
"""

from __future__ import annotations

from torch import Tensor, nn

from segbench.models.blocks import FCNHead, SegmentationModel, resize
from segbench.models.encoders.dilated import build_dilated_encoder
from segbench.models.registry import register_model

__all__ = ["FCNResNet", "fcn"]

AUX_WEIGHT = 0.5  # torchvision references/segmentation/train.py: loss = out + 0.5 * aux


class FCNResNet(SegmentationModel):
    """torchvision's FCN: dilated encoder -> FCN head (``head`` = conv-BN-ReLU-dropout, then ``classifier``) -> bilinear upsampling;
    optional ``aux_head`` on the stage before last."""

    def __init__(self, encoder: nn.Module, num_classes: int, aux_head: bool):
        super().__init__()
        self.encoder = encoder
        head = FCNHead(encoder.out_channels[-1], num_classes)
        # torchvision's FCNHead, split so the final 1x1 conv is the model's ``classifier``.
        self.head = nn.Sequential(*list(head)[:-1])
        self.classifier = head[-1]
        self.aux_head = FCNHead(encoder.out_channels[-2], num_classes) if aux_head else None
        self.aux_weight = AUX_WEIGHT if aux_head else 0.0

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        features = self.encoder(x)
        logits = resize(self.classifier(self.head(features[-1])), x.shape[-2:])
        aux = None
        if self.aux_head is not None and self.training:
            aux = resize(self.aux_head(features[-2]), x.shape[-2:])
        return self._outputs(logits, aux)


@register_model(
    "fcn",
    paper=(
        "Long, Shelhamer, Darrell. Fully Convolutional Networks for Semantic Segmentation. CVPR 2015 "
        "(dilated-ResNet form of torchvision's fcn_resnet50/101)"
    ),
    year=2015,
    recipe="cnn",
    summary=(
        "The FCN recipe on a modern backbone (torchvision's variant, not the paper's VGG16 FCN-8s: that is "
        "fcn8s): a dilated ResNet scores every position at 1/8 resolution and bilinear upsampling returns the "
        "scores at image size."
    ),
    blocks=(
        "Dilated ResNet-50/101 (output stride 8); head: 3x3 conv to C/4 channels, BN, ReLU, dropout 0.1, 1x1 "
        "classifier; bilinear x8; optional auxiliary FCN head on layer3 (loss weight 0.5)."
    ),
    strengths=(
        "The simplest strong baseline: one conv of context on top of the backbone; same layout as torchvision, "
        "so its COCO-trained weights convert directly."
    ),
    weaknesses=(
        "No multi-scale or global context module, so large objects and scene-level consistency suffer; "
        "boundaries come from a single 8x bilinear upsampling; OS 8 dilation makes the last stages expensive."
    ),
)
def fcn(
    *,
    num_classes: int,
    in_channels: int = 3,
    encoder: str = "resnet50",
    output_stride: int = 8,
    aux_head: bool = False,
) -> FCNResNet:
    """FCN-ResNet (torchvision layout); ``aux_head=True`` as torchvision's reference training. ``encoder``: any
    encoder that takes ``output_stride`` (ResNet, MobileNetV3, EfficientNet)."""
    backbone = build_dilated_encoder(encoder, in_channels=in_channels, output_stride=output_stride)
    return FCNResNet(backbone, num_classes, aux_head)
