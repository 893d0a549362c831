"""The paper's FCNs, registered as ``fcn32s``, ``fcn16s`` and ``fcn8s`` (class ``FCNVGG``): FCN-32s, FCN-16s
and FCN-8s (Long, Shelhamer, Darrell, CVPR 2015; Shelhamer et al., TPAMI 2016) on VGG16, as the reference
Caffe nets (fcn.berkeleyvision.org, ``voc-fcn{32,16,8}s``, ``voc-fcn8s-atonce``). Not to be confused with
``fcn`` (``fcn_resnet.py``, class ``FCNResNet``): torchvision's later variant, a dilated ResNet with one
conv head and no skips.

The trunk is VGG16 with fc6/fc7 turned into convolutions (``VGGEncoder(variant="fcn")``, conv1_1 padded by
100 pixels). A 1x1 "score" layer predicts the classes from fc7 at stride 32; the skip architecture
(Sec. 4.2) adds score layers on pool4 and pool3 and fuses them with 2x upsampled coarser scores:

- FCN-32s: score_fr -> 32x upsampling.
- FCN-16s: score_fr -> 2x, + score_pool4 -> 16x.
- FCN-8s:  score_fr -> 2x, + score_pool4 -> 2x, + score_pool3 -> 8x.

Upsampling is a transposed convolution initialised to bilinear interpolation (Sec. 3.3). The maps are
aligned by cropping as Caffe's ``crop`` layer computes it for this geometry: with conv1_1's padding of 100,
2x2 pooling and the unpadded 7x7 fc6, score_pool4 is cropped from offset 5, score_pool3 from 9, and the
final 32x/16x/8x output from 19/27/31; any input size works and the logits come back at its size.
"""

from __future__ import annotations

from torch import Tensor, nn

from segbench.models.blocks import SegmentationModel, bilinear_kernel
from segbench.models.encoders.vgg import VGGEncoder
from segbench.models.registry import build_encoder, register_model

__all__ = ["FCNVGG", "fcn32s", "fcn16s", "fcn8s"]

# Offsets of the reference nets' crop layers (derived in the module docstring's geometry).
POOL4_OFFSET = 5
POOL3_OFFSET = 9
FINAL_OFFSET = {32: 19, 16: 27, 8: 31}
# voc-fcn8s-atonce scales the skip inputs so that all three streams can be trained together from the
# start instead of in stages ("all-at-once" training, TPAMI 2016).
POOL4_SCALE = 0.01
POOL3_SCALE = 0.0001


def _crop(x: Tensor, offset: int, size: tuple[int, int]) -> Tensor:
    h, w = size
    if x.shape[-2] < offset + h or x.shape[-1] < offset + w:
        raise RuntimeError(f"cannot crop {tuple(x.shape[-2:])} at offset {offset} to {(h, w)}")
    return x[..., offset : offset + h, offset : offset + w]


def _upsampler(num_classes: int, factor: int, learnable: bool) -> nn.ConvTranspose2d:
    layer = nn.ConvTranspose2d(num_classes, num_classes, 2 * factor, stride=factor, bias=False)
    layer.weight.data.copy_(bilinear_kernel(num_classes, 2 * factor))
    layer.weight.requires_grad_(learnable)
    return layer


class FCNVGG(SegmentationModel):
    """The paper's VGG16 FCN with predictions at ``prediction_stride`` 32, 16 or 8 (FCN-32s/16s/8s: the skip
    architecture of Sec. 4.2).

    Args:
        encoder: a ``VGGEncoder(variant="fcn")`` (VGG16 or VGG16-BN).
        num_classes: output classes.
        prediction_stride: 32, 16 or 8.
        learnable_upsampling: learn the transposed convolutions (CVPR Sec. 4.2: "initialize the 2x
            upsampling to bilinear interpolation, but allow the parameters to be learned"). False fixes
            them to bilinear, as the released reference nets do (``lr_mult: 0``).
        scale_skips: scale pool4 by 0.01 and pool3 by 0.0001 before scoring, as ``voc-fcn8s-atonce``
            does to train the skips together with the trunk from the start.
        zero_init_scores: zero-initialise the score layers, as the paper ("random initialization yielded
            neither better performance nor faster convergence") and reference nets do. The trunk then
            receives no gradient on the first step only; False draws them from N(0, 0.01^2).
    """

    def __init__(
        self,
        encoder: VGGEncoder,
        num_classes: int,
        prediction_stride: int = 8,
        learnable_upsampling: bool = True,
        scale_skips: bool = True,
        zero_init_scores: bool = True,
    ):
        super().__init__()
        if getattr(encoder, "variant", None) != "fcn":
            raise ValueError("FCN needs the FCN trunk: VGGEncoder(variant='fcn') (conv1_1 padded by 100, fc6/fc7)")
        if prediction_stride not in FINAL_OFFSET:
            raise ValueError(f"prediction_stride must be 32, 16 or 8, got {prediction_stride}")
        self.encoder = encoder
        self.prediction_stride = prediction_stride
        self.scale_skips = scale_skips
        channels = encoder.out_channels
        self.classifier = nn.Conv2d(channels[4], num_classes, 1)  # score_fr
        if prediction_stride == 32:
            self.upscore = _upsampler(num_classes, 32, learnable_upsampling)
        else:
            self.score_pool4 = nn.Conv2d(channels[3], num_classes, 1)
            self.upscore2 = _upsampler(num_classes, 2, learnable_upsampling)
        if prediction_stride == 16:
            self.upscore16 = _upsampler(num_classes, 16, learnable_upsampling)
        if prediction_stride == 8:
            self.score_pool3 = nn.Conv2d(channels[2], num_classes, 1)
            self.upscore_pool4 = _upsampler(num_classes, 2, learnable_upsampling)
            self.upscore8 = _upsampler(num_classes, 8, learnable_upsampling)
        for name in ("classifier", "score_pool4", "score_pool3"):
            score = getattr(self, name, None)
            if score is not None:
                if zero_init_scores:
                    nn.init.zeros_(score.weight)
                else:
                    nn.init.normal_(score.weight, std=0.01)
                nn.init.zeros_(score.bias)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        _, _, pool3, pool4, fc7 = self.encoder(x)
        score = self.classifier(fc7)
        if self.prediction_stride == 32:
            return self._outputs(_crop(self.upscore(score), FINAL_OFFSET[32], size), None)
        score = self.upscore2(score)
        skip = self.score_pool4(pool4 * POOL4_SCALE if self.scale_skips else pool4)
        score = score + _crop(skip, POOL4_OFFSET, score.shape[-2:])
        if self.prediction_stride == 16:
            return self._outputs(_crop(self.upscore16(score), FINAL_OFFSET[16], size), None)
        score = self.upscore_pool4(score)
        skip = self.score_pool3(pool3 * POOL3_SCALE if self.scale_skips else pool3)
        score = score + _crop(skip, POOL3_OFFSET, score.shape[-2:])
        return self._outputs(_crop(self.upscore8(score), FINAL_OFFSET[8], size), None)


def _fcn_encoder(encoder: str, in_channels: int, base_width: int) -> VGGEncoder:
    if encoder not in ("vgg16", "vgg16_bn"):
        raise ValueError(f"FCN is defined on VGG16: encoder must be 'vgg16' or 'vgg16_bn', got {encoder!r}")
    return build_encoder(encoder, in_channels=in_channels, variant="fcn", base_width=base_width)


PAPER = (
    "Long, Shelhamer, Darrell. Fully Convolutional Networks for Semantic Segmentation. CVPR 2015 "
    "(extended: Shelhamer, Long, Darrell, TPAMI 2016; the paper's VGG16 nets with skip layers)"
)
BLOCKS = (
    "A VGG16 classifier 'convolutionalized' (fc6/fc7 as 7x7 and 1x1 convolutions), 1x1 score layers, and "
    "transposed convolutions initialised to bilinear upsampling; the skip architecture adds scores from "
    "pool4 (16s) and pool3 (8s) to the upsampled coarse scores. Cropping aligns maps, so any size works."
)
WEAKNESSES_COMMON = (
    "Heavy: 134-136M parameters, 103M of them in fc6, and the 100-pixel padding of conv1_1 makes every "
    "image cost as much as one 200 pixels larger. No context module, no BatchNorm in the reference net, "
    "fixed output stride 32 in the trunk."
)


def _register(name: str, stride: int, summary: str, strengths: str, weaknesses: str):
    def builder(
        *,
        num_classes: int,
        in_channels: int = 3,
        encoder: str = "vgg16",
        base_width: int = 64,
        learnable_upsampling: bool = True,
        scale_skips: bool = True,
        zero_init_scores: bool = True,
    ) -> FCNVGG:
        return FCNVGG(
            _fcn_encoder(encoder, in_channels, base_width),
            num_classes,
            prediction_stride=stride,
            learnable_upsampling=learnable_upsampling,
            scale_skips=scale_skips,
            zero_init_scores=zero_init_scores,
        )

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = (f"The paper's FCN-{stride}s on VGG16; options as ``FCNVGG`` (``base_width`` < 64 only for quick "
                       "tests). Not ``fcn`` (torchvision's dilated-ResNet FCN).")
    return register_model(
        name, paper=PAPER, year=2015, recipe="cnn", summary=summary, blocks=BLOCKS,
        strengths=strengths, weaknesses=weaknesses,
    )(builder)


fcn32s = _register(
    "fcn32s",
    32,
    summary="The first end-to-end fully convolutional segmenter: an ImageNet classifier turned into a dense "
    "predictor whose stride-32 scores are upsampled 32x in one learned step.",
    strengths="Simple and a clean baseline: any input size, one forward pass for the whole image, ImageNet "
    "features reused as they are.",
    weaknesses="Coarse: a single 32x upsampling blurs boundaries and loses thin and small objects. "
    + WEAKNESSES_COMMON,
)
fcn16s = _register(
    "fcn16s",
    16,
    summary="FCN-32s plus one skip: scores from pool4 fused with the 2x-upsampled fc7 scores, then 16x upsampling.",
    strengths="Finer boundaries than FCN-32s at almost no cost (one 1x1 score layer on pool4).",
    weaknesses="Still stride-16 output with shallow, unrefined skip scores. " + WEAKNESSES_COMMON,
)
fcn8s = _register(
    "fcn8s",
    8,
    summary="FCN with two skips (pool4 and pool3): coarse semantic scores refined by shallower, finer "
    "layers, the paper's best model (62.2 mIoU on VOC2012 test).",
    strengths="The best FCN: stride-8 predictions combine deep semantics with pool3/pool4 localisation; "
    "the skip idea became the template for encoder-decoder nets.",
    weaknesses="Skips are single linear score layers, so boundaries stay blobby next to later "
    "decoders or CRFs. " + WEAKNESSES_COMMON,
)
