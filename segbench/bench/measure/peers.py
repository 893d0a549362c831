"""Peer implementations of our architectures, for ``segbench speed``: the same architecture at the same
size from another library, so a time ratio says something about our code rather than the network.

Hugging Face ``transformers`` has two of ours in plain PyTorch: ``SegformerForSemanticSegmentation``
and ``UperNetForSemanticSegmentation`` with a Swin backbone. Each peer is configured from the segbench
model it is compared with (read from its modules), and both parameter counts are reported so a
mismatch is visible. The other usual peers (torchvision's FCN/DeepLab v3, segmentation_models_pytorch's
U-Net/PSPNet/DeepLab v3+, timm backbones) are never imported: they fail against CPU-only torch builds
without torchvision, and importing them can break the process.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from segbench.models.blocks import resize

__all__ = ["Peer", "build_peer", "UNAVAILABLE_PEERS"]

_NOT_IMPORTED = "not imported: it fails against this CPU-only torch build without torchvision"
# Architectures whose natural peer lives in a library we may not import, and which one.
UNAVAILABLE_PEERS: dict[str, str] = {
    "fcn": f"torchvision fcn_resnet50 ({_NOT_IMPORTED})",
    "deeplabv3": f"torchvision deeplabv3_resnet50 ({_NOT_IMPORTED})",
    "unet": f"segmentation_models_pytorch Unet ({_NOT_IMPORTED})",
    "pspnet": f"segmentation_models_pytorch PSPNet ({_NOT_IMPORTED})",
    "deeplabv3plus": f"segmentation_models_pytorch DeepLabV3Plus ({_NOT_IMPORTED})",
}


class HFSegmenter(nn.Module):
    """A transformers segmentation model called like ours: logits at input resolution; its own loss
    (with its auxiliary head where it has one) through ``training_loss``."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model

    def forward(self, x: Tensor) -> Tensor:
        return resize(self.hf(pixel_values=x).logits, x.shape)

    def training_loss(self, x: Tensor, target: Tensor) -> Tensor:
        return self.hf(pixel_values=x, labels=target).loss


@dataclass
class Peer:
    name: str  # library and class
    model: nn.Module  # HFSegmenter
    note: str = ""


def _segformer_peer(model: nn.Module, num_classes: int, in_channels: int) -> Peer:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    mit = model.encoder.config
    head = model.decode_head
    config = SegformerConfig(
        num_channels=in_channels,
        num_encoder_blocks=len(mit.depths),
        depths=list(mit.depths),
        sr_ratios=list(mit.sr_ratios),
        hidden_sizes=list(mit.embed_dims),
        num_attention_heads=list(mit.num_heads),
        decoder_hidden_size=head.classifier.in_channels,
        classifier_dropout_prob=head.dropout.p,
        num_labels=num_classes,
        semantic_loss_ignore_index=255,
    )
    note = ""
    if not isinstance(head.projections[0], nn.Conv2d):
        note = "ours uses MMSegmentation's conv-BN-ReLU projections (projection_bn); the peer the paper's linear ones"
    return Peer("transformers SegformerForSemanticSegmentation", HFSegmenter(SegformerForSemanticSegmentation(config)), note)


def _upernet_swin_peer(model: nn.Module, num_classes: int, in_channels: int) -> Peer:
    from transformers import SwinConfig, UperNetConfig, UperNetForSemanticSegmentation

    swin = model.encoder
    blocks = [stage.blocks for stage in swin.layers]
    backbone = SwinConfig(
        num_channels=in_channels,
        embed_dim=swin.out_channels[0],
        depths=[len(b) for b in blocks],
        num_heads=[b[0].attn.num_heads for b in blocks],
        window_size=blocks[0][0].window_size,
        drop_path_rate=0.3,
        out_features=[f"stage{i + 1}" for i in range(len(blocks))],
    )
    head = model.decode_head
    aux = model.aux_head
    config = UperNetConfig(
        backbone_config=backbone,
        hidden_size=model.classifier.in_channels,
        pool_scales=[branch[0].output_size for branch in head.ppm],
        use_auxiliary_head=aux is not None,
        auxiliary_in_channels=swin.out_channels[2],
        auxiliary_channels=aux[0].out_channels if aux is not None else 256,
        auxiliary_loss_weight=model.aux_weight or 0.4,
        num_labels=num_classes,
        loss_ignore_index=255,
    )
    return Peer("transformers UperNetForSemanticSegmentation (Swin)", HFSegmenter(UperNetForSemanticSegmentation(config)))


def build_peer(arch: str, model: nn.Module, *, num_classes: int, in_channels: int) -> tuple[Peer | None, str]:
    """The peer of ``model`` (a segbench ``arch``) at the same size, or None and the reason there is none."""
    from segbench.models.encoders.mit import MixTransformer
    from segbench.models.encoders.swin import SwinTransformer

    if arch == "segformer" and isinstance(model.encoder, MixTransformer):
        builder = _segformer_peer
    elif arch == "upernet" and isinstance(model.encoder, SwinTransformer):
        builder = _upernet_swin_peer
    elif arch == "upernet":
        return None, "no peer for UPerNet on a non-Swin encoder (the transformers peer is set up with Swin)"
    else:
        return None, "no peer: " + UNAVAILABLE_PEERS.get(arch, "no plain-PyTorch implementation of it is installed")
    try:
        import transformers  # noqa: F401
    except ImportError:
        return None, "no peer: transformers is not installed (pip install 'segbench[hf]')"
    try:
        return builder(model, num_classes, in_channels), ""
    except (AttributeError, IndexError, TypeError, ValueError) as err:
        return None, f"no peer: could not configure it from the segbench model ({type(err).__name__}: {err})"
