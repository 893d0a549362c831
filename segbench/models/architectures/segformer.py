"""SegFormer (Xie, Wang, Yu, Anandkumar, Alvarez, Luo. SegFormer: Simple and Efficient Design for Semantic
Segmentation with Transformers. NeurIPS 2021): a Mix Transformer encoder (``segbench.models.encoders.mit``) and
the lightweight All-MLP decoder of Sec. 3.2, Eq. 4:

1. each stage's features go through a linear layer to a common width C (``decoder_dim``: 256 for B0/B1,
   768 for B2-B5, as in the paper's experiments and official configs);
2. all four are upsampled bilinearly to stride 4 and concatenated (deepest first, as the official code
   does);
3. a 1x1 conv fuses the 4C channels back to C (the paper writes a Linear layer; the official code, and
   so every released checkpoint, adds BN + ReLU, which segbench keeps);
4. dropout 0.1 (channel-wise, as in the official code) and a 1x1 classifier give stride-4 logits,
   which are bilinearly upsampled to the input size.

``projection_bn=True`` builds MMSegmentation's ``SegformerHead`` variant instead, where every per-stage
projection is a 1x1 conv + BN + ReLU; it exists so that MMSegmentation checkpoints load faithfully
(``segbench.checkpoints.convert.segformer``). The paper's decoder is the default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.blocks import ConvBNReLU, SegmentationModel, resize
from segbench.models.registry import ENCODERS, build_encoder, list_encoders, register_model

__all__ = ["SegFormer", "AllMLPDecoder", "PAPER_DECODER_DIMS", "segformer"]

# Decoder width C: 256 for the lightweight B0/B1, 768 for B2-B5 (paper Sec. 4 and the official configs).
PAPER_DECODER_DIMS = {"mit_b0": 256, "mit_b1": 256, "mit_b2": 768, "mit_b3": 768, "mit_b4": 768, "mit_b5": 768}


class AllMLPDecoder(nn.Module):
    """The All-MLP decoder (Sec. 3.2). A per-token linear layer is a 1x1 conv on the feature map, so the
    projections are 1x1 convs: the same function and the same weights (reshaped) as the paper's MLPs."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        decoder_dim: int,
        dropout: float = 0.1,
        projection_bn: bool = False,
    ):
        super().__init__()
        self.projections = nn.ModuleList(
            ConvBNReLU(c, decoder_dim, kernel_size=1) if projection_bn else nn.Conv2d(c, decoder_dim, 1)
            for c in in_channels
        )
        self.fuse = ConvBNReLU(len(in_channels) * decoder_dim, decoder_dim, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(decoder_dim, num_classes, 1)
        # mmcv's ConvModule initialisation of the fusion conv, as in the official code.
        nn.init.kaiming_normal_(self.fuse[0].weight, mode="fan_out", nonlinearity="relu")

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Eq. 4, with the fusion conv distributed over the stages: a 1x1 conv on the concatenation is the
        sum of its per-stage slices, and a 1x1 conv (a per-pixel linear map) commutes with bilinear
        upsampling, so each slice runs at its stage's resolution before upsampling. Same function and
        weights as concatenate-then-fuse, without the 4C-channel map at stride 4 (about 3/4 of the fusion
        conv's multiply-adds and its concatenation, forward and backward)."""
        size = features[0].shape[-2:]
        # The official fusion weights take the stages deepest first.
        slices = self.fuse[0].weight.chunk(len(features), dim=1)[::-1]
        fused = None
        for projection, weight, f in zip(self.projections, slices, features):
            level = resize(F.conv2d(projection(f), weight), size)
            fused = level if fused is None else fused + level
        fused = self.fuse[2](self.fuse[1](fused))  # BatchNorm, ReLU
        return self.classifier(self.dropout(fused))


class SegFormer(SegmentationModel):
    """MiT encoder + All-MLP decoder; logits at input resolution."""

    def __init__(
        self, encoder: nn.Module, num_classes: int, decoder_dim: int, dropout: float = 0.1, projection_bn: bool = False
    ):
        super().__init__()
        self.encoder = encoder
        self.decode_head = AllMLPDecoder(encoder.out_channels, num_classes, decoder_dim, dropout, projection_bn)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.decode_head(self.encoder(x))
        return self._outputs(resize(logits, x.shape[-2:]), None)


@register_model(
    "segformer",
    paper="Xie, Wang, Yu, Anandkumar, Alvarez, Luo. SegFormer: Simple and Efficient Design for Semantic "
    "Segmentation with Transformers. NeurIPS 2021",
    year=2021,
    recipe="transformer",
    summary="A hierarchical transformer without positional embeddings (Mix Transformer) feeds a decoder made "
    "only of linear layers: the encoder's large receptive field makes a heavy head unnecessary.",
    blocks="Overlapping strided-conv patch embeddings keep local continuity; efficient self-attention shrinks "
    "the key/value map 8/4/2/1 times per side so global attention stays affordable at stride 4; Mix-FFN's 3x3 "
    "depthwise conv replaces positional encodings; the All-MLP decoder projects the four stages to one "
    "width, upsamples to stride 4, concatenates and fuses them with a 1x1 conv.",
    strengths="Strong accuracy per parameter and FLOP (B0 is 3.8M parameters); any input size works with no "
    "positional-embedding interpolation; robust to image corruptions (the paper's Cityscapes-C study); one "
    "design scales from B0 to B5.",
    weaknesses="Attention memory still grows quadratically with image area at stage 1 (divided by 64), so "
    "large crops are costly; the head predicts at stride 4 and upsamples bilinearly, blurring thin "
    "structures; needs ImageNet pre-training and AdamW with a long schedule to shine; small-data training "
    "from scratch is weak.",
)
def segformer(
    *,
    num_classes: int,
    in_channels: int = 3,
    encoder: str = "mit_b0",
    decoder_dim: int | None = None,
    dropout: float = 0.1,
    drop_path_rate: float = 0.1,
    embed_dims: Sequence[int] | None = None,
    depths: Sequence[int] | None = None,
    num_heads: Sequence[int] | None = None,
    sr_ratios: Sequence[int] | None = None,
    norm_eps: float = 1e-6,
    projection_bn: bool = False,
) -> SegFormer:
    """SegFormer with a MiT encoder (``mit_b0`` ... ``mit_b5``). ``decoder_dim`` defaults to the paper's
    width for that encoder; ``embed_dims``/``depths``/``num_heads``/``sr_ratios``/``norm_eps`` go to the
    encoder (slim variants, Hugging Face's eps); ``projection_bn`` selects MMSegmentation's head variant."""
    mit_names = [name for name in list_encoders() if ENCODERS[name].kind == "mit"]
    if encoder not in mit_names:
        raise ValueError(f"segformer needs a Mix Transformer encoder; got {encoder!r}, valid: {', '.join(mit_names)}")
    backbone = build_encoder(
        encoder,
        in_channels=in_channels,
        drop_path_rate=drop_path_rate,
        embed_dims=embed_dims,
        depths=depths,
        num_heads=num_heads,
        sr_ratios=sr_ratios,
        norm_eps=norm_eps,
    )
    decoder_dim = decoder_dim or PAPER_DECODER_DIMS[encoder]
    return SegFormer(backbone, num_classes, decoder_dim, dropout, projection_bn)
