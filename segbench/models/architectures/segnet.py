"""SegNet (Badrinarayanan, Kendall, Cipolla, TPAMI 2017; arXiv 2015), as its Caffe net
(SegNet-Tutorial ``segnet_train.prototxt``).

The encoder is VGG16-BN's 13 convolutions; each max pooling keeps the argmax locations (Sec. 3: "storing
only the max-pooling indices"). The decoder mirrors the encoder stage by stage: it upsamples with those
indices (a sparse map: each value goes back where its maximum came from, zeros elsewhere), then densifies
it with conv-BN-ReLU layers, one per encoder conv, whose last one maps to the next shallower stage's width.
The mirror of conv1_1 is the classifier: a 3x3 convolution to the classes (``conv1_1_D`` in the reference
net), with no BN or ReLU. No feature maps are skipped across, only indices.

Pooling rounds up (Caffe), and unpooling restores each pooled map's exact input size, so any input size
works.
"""

from __future__ import annotations

from torch import Tensor, nn

from segbench.models.blocks import SegmentationModel
from segbench.models.encoders.vgg import VGGEncoder
from segbench.models.registry import build_encoder, register_model

__all__ = ["SegNet", "segnet", "max_unpool"]


def max_unpool(x: Tensor, indices: Tensor, size: tuple[int, int]) -> Tensor:
    """Place each value of ``x`` at its argmax position (``indices`` of ``F.max_pool2d``, flat over H x W)
    in a zero map of ``size``: SegNet's upsampling. A scatter is ``F.max_unpool2d`` with ``output_size``,
    written so that it also exports to ONNX with dynamic sizes (``max_unpool2d`` fails to trace them)."""
    n, c = x.shape[:2]
    out = x.new_zeros(n, c, size[0] * size[1])
    return out.scatter(2, indices.flatten(2), x.flatten(2)).view(n, c, size[0], size[1])


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    # Conv with bias, then BN, as the reference net and the VGG16-BN encoder it mirrors.
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class SegNet(SegmentationModel):
    """SegNet on a plain VGG encoder (2x2 pools); the decoder is derived from the encoder's stages.

    Args:
        encoder: ``VGGEncoder(variant="plain", batch_norm=True, ceil_mode=True)`` for the paper's net.
        num_classes: output classes.
    """

    def __init__(self, encoder: VGGEncoder, num_classes: int):
        super().__init__()
        if getattr(encoder, "variant", None) != "plain":
            raise ValueError("SegNet needs a plain VGG encoder (2x2 max pooling): VGGEncoder(variant='plain')")
        self.encoder = encoder
        widths = encoder.stage_widths
        # decoder[0] undoes stage 5 (deepest) ... decoder[4] undoes stage 1.
        stages = []
        for stage in reversed(range(len(widths))):
            width, n_convs = widths[stage], encoder.convs_per_stage[stage]
            layers = []
            for _ in range(n_convs - 1):
                layers += _conv_bn_relu(width, width)
            if stage > 0:
                layers += _conv_bn_relu(width, widths[stage - 1])
            stages.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList(stages)
        self.classifier = nn.Conv2d(widths[0], num_classes, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        features, indices, sizes = self.encoder.forward_with_indices(x)
        y = features[-1]
        for stage, block in zip(reversed(range(len(indices))), self.decoder):
            y = max_unpool(y, indices[stage], sizes[stage])
            y = block(y)
        return self._outputs(self.classifier(y), None)


@register_model(
    "segnet",
    paper="Badrinarayanan, Kendall, Cipolla. SegNet: A Deep Convolutional Encoder-Decoder Architecture for "
    "Image Segmentation. IEEE TPAMI 39(12), 2017 (arXiv:1511.00561, 2015)",
    year=2015,
    recipe="cnn",
    summary="Encoder-decoder whose decoder upsamples with the encoder's stored max-pooling indices "
    "instead of learned deconvolutions or skipped feature maps.",
    blocks="VGG16-BN encoder (13 conv-BN-ReLU, 5 max poolings that keep argmax indices); a mirrored decoder "
    "of max-unpooling followed by conv-BN-ReLU; a 3x3 convolution as classifier.",
    strengths="Memory-light at inference: only pooling indices cross from encoder to decoder, not feature "
    "maps; boundaries land where the maxima were, so object edges stay sharp; 29.5M parameters, a fifth "
    "of FCN's.",
    weaknesses="No multi-scale context and no skipped features: unpooled maps are sparse and the decoder "
    "must re-invent detail, so it trails FCN-8s/DeepLab on accuracy; full-resolution decoding is slow "
    "(as many decoder as encoder convolutions).",
)
def segnet(*, num_classes: int, in_channels: int = 3, encoder: str = "vgg16_bn", base_width: int = 64) -> SegNet:
    """SegNet; ``encoder`` "vgg16_bn" (the paper) or "vgg16" (BN in the decoder only); ``base_width`` < 64
    only for quick tests."""
    if encoder not in ("vgg16", "vgg16_bn"):
        raise ValueError(f"SegNet is defined on VGG16: encoder must be 'vgg16_bn' or 'vgg16', got {encoder!r}")
    trunk = build_encoder(encoder, in_channels=in_channels, variant="plain", ceil_mode=True, base_width=base_width)
    return SegNet(trunk, num_classes)
