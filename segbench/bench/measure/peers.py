"""Peer implementations of our architectures, for ``segbench speed``: the same architecture at the same
size from another library, so a time ratio says something about our code rather than the network.

Each peer is configured from the segbench model it is compared with, read off its modules (backbone
depth, output stride and dilations, head widths, atrous rates, separable or not, auxiliary head or not),
and both parameter counts are compared by the caller: a pair whose counts differ is a different
configuration and gets no ratio.

| segbench | peer | loss in its training step |
|---|---|---|
| ``fcn`` | torchvision ``FCN`` (``FCNHead``) on ``IntermediateLayerGetter(resnet*)`` | segbench's (the run's) |
| ``deeplabv3`` | torchvision ``DeepLabV3`` (``DeepLabHead``, our rates) on the same | segbench's |
| ``pspnet`` | segmentation_models_pytorch ``PSPNet`` (encoder ``resnet*``, our output stride) | segbench's |
| ``deeplabv3plus`` | segmentation_models_pytorch ``DeepLabV3Plus`` | segbench's |
| ``lraspp`` (MobileNetV3) | torchvision ``LRASPP`` on ``mobilenet_v3_*(dilated=...).features``, our taps | segbench's |
| ``segformer`` | transformers ``SegformerForSemanticSegmentation`` | its own |
| ``upernet`` (Swin) | transformers ``UperNetForSemanticSegmentation`` with a Swin backbone | its own |

torchvision's ResNet is built with ``replace_stride_with_dilation`` where torchvision allows it
(Bottleneck ResNets); its BasicBlock (ResNet-18/34) refuses dilation and it has no multi-grid, so there
the strides, paddings and dilations of its convolutions are set to segbench's, conv by conv (the module
names are the same): the same weights computing the same function, which the note on the row says.
U-Net (the paper's own contracting path), SegNet, FCN-8s and DeepLab v1/v2 have no peer in these
libraries. The libraries are imported only when a peer is asked for: a library that is not installed
names ``make peers``; one that is installed but does not import (a torchvision built for another torch,
a transformers whose lazy import of the class fails) or a peer that cannot be built raises
:class:`PeerFailed`, which the caller turns into the row's "no peer: ... failed (...)" while keeping
segbench's own figures. Tests inject their own ``PeerSpec`` table through ``build_peer(specs=...)``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable, Mapping

from torch import Tensor, nn

from segbench.models.blocks import resize
from segbench.models.encoders.mit import MixTransformer
from segbench.models.encoders.mobilenetv3 import MobileNetV3
from segbench.models.encoders.resnet import ResNet
from segbench.models.encoders.swin import SwinTransformer

__all__ = ["Peer", "PeerModel", "PeerSpec", "PeerFailed", "build_peer", "NO_PEER", "MAKE_PEERS"]

MAKE_PEERS = "run `make peers` (or pip install 'segbench[peers]' with the torchvision built for this torch)"
# Architectures no library here implements, and why.
NO_PEER: dict[str, str] = {
    "unet": "segmentation_models_pytorch's Unet decodes a classification encoder (ResNet, ...), not the paper's "
            "own contracting path",
    "segnet": "none of torchvision, timm, segmentation_models_pytorch, transformers has SegNet",
    "fcn8s": "none of torchvision, timm, segmentation_models_pytorch, transformers has the VGG FCN-8s/16s/32s",
    "fcn16s": "none of torchvision, timm, segmentation_models_pytorch, transformers has the VGG FCN-8s/16s/32s",
    "fcn32s": "none of torchvision, timm, segmentation_models_pytorch, transformers has the VGG FCN-8s/16s/32s",
    "deeplabv1": "none of torchvision, timm, segmentation_models_pytorch, transformers has DeepLab v1",
    "deeplabv2": "none of torchvision, timm, segmentation_models_pytorch, transformers has DeepLab v2 (ASPP-L)",
}


class PeerModel(nn.Module):
    """A peer library's network called like ours: logits at input resolution in eval mode; in training
    mode ``{"out", "aux"}`` where it has an auxiliary head (weighted ``aux_weight`` by the step), or
    its own loss through ``training_loss`` where the library computes one (``Peer.own_loss``)."""

    aux_weight: float = 0.0

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net


class HFSegmenter(PeerModel):
    """A transformers segmentation model; its own loss (with its auxiliary head where it has one)."""

    def forward(self, x: Tensor) -> Tensor:
        return resize(self.net(pixel_values=x).logits, x.shape)

    def training_loss(self, x: Tensor, target: Tensor) -> Tensor:
        return self.net(pixel_values=x, labels=target).loss


class HFUperNet(HFSegmenter):
    """transformers' UperNet, whose forward computes its auxiliary head in eval mode too: inference here
    is that forward without it (backbone, decode head), the work ours does."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return super().forward(x)
        features = self.net.backbone.forward_with_filtered_kwargs(x).feature_maps
        return resize(self.net.decode_head(features), x.shape)


class TorchvisionSegmenter(PeerModel):
    """torchvision's ``FCN``/``DeepLabV3``: its ``{"out", "aux"}`` dict, already at input resolution. Its
    forward computes the auxiliary head in eval mode too: inference here is the same class built without
    it (on the same modules), the work ours does."""

    def __init__(self, net: nn.Module, aux_weight: float):
        super().__init__(net)
        self.aux_weight = aux_weight
        self.inference_net = type(net)(net.backbone, net.classifier, None) if net.aux_classifier is not None else None

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        if not self.training:
            return (self.inference_net or self.net)(x)["out"]
        out = self.net(x)
        return {"out": out["out"], "aux": out["aux"]} if "aux" in out else out["out"]


class TorchvisionLRASPP(PeerModel):
    """torchvision's ``LRASPP``: its ``{"out"}`` dict, at input resolution; no auxiliary head."""

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)["out"]


class SMPSegmenter(PeerModel):
    """A segmentation_models_pytorch model: its masks, at input resolution."""

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@dataclass
class Peer:
    name: str  # library and class
    model: PeerModel
    own_loss: bool = False  # True: the library's loss (``training_loss``); False: the run's, as ours
    note: str = ""


class PeerFailed(Exception):
    """The peer's library is installed but the peer could not be imported or built (its message says
    which and why): the row has no peer, never a failed measurement of segbench's own."""


def _failure(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err)[:160]}"


def _importable(module: str, package: str) -> str:
    """'' when ``module`` imports here, else (not installed) why not and how to get it. Installed but
    failing at import (a torchvision built for another torch: its C++ operators do not load) raises
    :class:`PeerFailed`."""
    if importlib.util.find_spec(module) is None:
        return f"needs {package}: {MAKE_PEERS}"
    try:
        importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - any failure to import means: no peer, and why
        raise PeerFailed(f"{module} import failed ({_failure(err)}); {MAKE_PEERS}") from err
    return ""


# --- torchvision -----------------------------------------------------------------------------------


def _conv_geometry(module: nn.Module) -> dict[str, tuple]:
    return {name: (m.stride, m.padding, m.dilation) for name, m in module.named_modules() if isinstance(m, nn.Conv2d)}


def _torchvision_resnet(encoder: nn.Module) -> tuple[nn.Module, str]:
    """torchvision's ResNet of ``encoder``'s depth, input channels and geometry (strides, dilations,
    multi-grid), without ``avgpool``/``fc`` use; and a note when torchvision could not build the geometry
    itself."""
    from torchvision.models import resnet as tv_resnet

    from segbench.models.encoders.resnet import BasicBlock

    dilate = [d > 1 for d in encoder.stage_dilations[1:]]  # layer2..layer4, as replace_stride_with_dilation
    basic = isinstance(encoder.layer1[0], BasicBlock)
    net = getattr(tv_resnet, f"resnet{encoder.depth}")(weights=None, replace_stride_with_dilation=None if basic else dilate)
    if encoder.conv1.in_channels != 3:
        net.conv1 = nn.Conv2d(encoder.conv1.in_channels, 64, 7, 2, 3, bias=False)
    ours, theirs = _conv_geometry(encoder), _conv_geometry(net)
    if set(ours) - set(theirs):
        raise ValueError(f"torchvision's ResNet lacks convolutions segbench's has: {sorted(set(ours) - set(theirs))[:3]}")
    differs = [name for name, geometry in ours.items() if theirs[name] != geometry]
    convs = dict(net.named_modules())
    for name in differs:  # the same kernel shapes: only where it samples changes
        conv = convs[name]
        conv.stride, conv.padding, conv.dilation = ours[name]
    if not differs:
        return net, ""
    why = [f"torchvision's ResNet-{encoder.depth} (BasicBlock) refuses dilation"] if basic and any(dilate) else []
    if encoder.multi_grid is not None:
        why.append(f"torchvision has no multi-grid {list(encoder.multi_grid)}")
    return net, (f"{' and '.join(why) or 'torchvision builds another geometry'}: the stride, padding and dilation "
                 f"of {len(differs)} of its convs are set to segbench's (same weights, same function)")


def _torchvision_segmentation(model: nn.Module, num_classes: int, net_class: type, head: nn.Module) -> Peer:
    """torchvision's ``net_class`` (``FCN``/``DeepLabV3``) with ``head`` on our encoder's twin, and its
    ``FCNHead`` on layer3 where ours has an auxiliary head."""
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.fcn import FCNHead

    encoder = model.encoder
    backbone, note = _torchvision_resnet(encoder)
    aux = model.aux_head is not None
    layers = {"layer4": "out", **({"layer3": "aux"} if aux else {})}
    aux_head = FCNHead(encoder.out_channels[-2], num_classes) if aux else None
    net = net_class(IntermediateLayerGetter(backbone, return_layers=layers), head, aux_head)
    return Peer(f"torchvision {net_class.__name__}", TorchvisionSegmenter(net, model.aux_weight if aux else 0.0),
                note=note)


def _fcn_peer(model: nn.Module, num_classes: int, in_channels: int) -> Peer:
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    return _torchvision_segmentation(model, num_classes, FCN, FCNHead(model.encoder.out_channels[-1], num_classes))


def _atrous_rates(aspp: nn.Module) -> list[int]:
    """The rates of an ASPP's atrous branches (between the 1x1 branch and the image pooling)."""
    return [next(m for m in branch.modules() if isinstance(m, nn.Conv2d)).dilation[0] for branch in aspp.convs[1:-1]]


def _deeplabv3_peer(model: nn.Module, num_classes: int, in_channels: int) -> Peer:
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

    head = DeepLabHead(model.encoder.out_channels[-1], num_classes, _atrous_rates(model.aspp))
    return _torchvision_segmentation(model, num_classes, DeepLabV3, head)


def _lraspp_peer(model: nn.Module, num_classes: int, in_channels: int) -> Peer:
    """torchvision's ``LRASPP`` on its MobileNetV3 of our variant (``dilated=True`` at output stride 16),
    reading the blocks ours reads (torchvision's own ``lraspp_mobilenet_v3_large`` with the default taps)."""
    from torchvision.models import mobilenetv3 as tv_mobilenetv3
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.lraspp import LRASPP

    encoder = model.encoder
    if encoder.output_stride not in (16, 32):
        raise ValueError(f"torchvision's MobileNetV3 has output stride 16 (dilated) or 32, not {encoder.output_stride}")
    net = getattr(tv_mobilenetv3, f"mobilenet_v3_{encoder.variant}")(weights=None, dilated=encoder.output_stride == 16)
    features = net.features
    if in_channels != 3:
        stem = features[0][0]
        features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 2, 1, bias=False)
    low, high = encoder.taps[model.low_level], encoder.taps[-1]
    backbone = IntermediateLayerGetter(features, return_layers={str(low): "low", str(high): "high"})
    head_width = model.cbr[0].out_channels
    lraspp = LRASPP(backbone, encoder.out_channels[model.low_level], encoder.out_channels[-1], num_classes, head_width)
    return Peer("torchvision LRASPP", TorchvisionLRASPP(lraspp))


# --- segmentation_models_pytorch ------------------------------------------------------------------


def _smp_resnet_options(model: nn.Module, in_channels: int, num_classes: int) -> tuple[dict, str]:
    encoder = model.encoder
    options = dict(encoder_name=f"resnet{encoder.depth}", encoder_weights=None, in_channels=in_channels,
                   classes=num_classes)
    note = []
    if encoder.multi_grid is not None:
        note.append(f"smp has no multi-grid {list(encoder.multi_grid)}: its last stage runs at one rate")
    if model.aux_head is not None:
        note.append("smp has no auxiliary segmentation head (its aux_params is an image classifier)")
    return options, "; ".join(note)


def _pspnet_peer(model: nn.Module, num_classes: int, in_channels: int) -> Peer:
    import segmentation_models_pytorch as smp

    options, note = _smp_resnet_options(model, in_channels, num_classes)
    stride = model.encoder.output_stride
    net = smp.PSPNet(**options, encoder_depth=5, output_stride=stride, upsampling=stride,
                     psp_out_channels=model.bottleneck[0].out_channels, psp_dropout=model.dropout.p)
    return Peer("segmentation_models_pytorch PSPNet", SMPSegmenter(net), note=note)


def _deeplabv3plus_peer(model: nn.Module, num_classes: int, in_channels: int) -> Peer:
    import segmentation_models_pytorch as smp

    from segbench.models.architectures.aspp import SeparableConvBNReLU

    options, note = _smp_resnet_options(model, in_channels, num_classes)
    net = smp.DeepLabV3Plus(
        **options, encoder_output_stride=model.encoder.output_stride, decoder_channels=model.aspp.out_channels,
        decoder_atrous_rates=_atrous_rates(model.aspp),
        decoder_aspp_separable=isinstance(model.aspp.convs[1], SeparableConvBNReLU),
        decoder_aspp_dropout=model.aspp.project[-1].p,
    )
    return Peer("segmentation_models_pytorch DeepLabV3Plus", SMPSegmenter(net), note=note)


# --- transformers ----------------------------------------------------------------------------------


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
    return Peer("transformers SegformerForSemanticSegmentation", HFSegmenter(SegformerForSemanticSegmentation(config)),
                own_loss=True, note=note)


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
    return Peer("transformers UperNetForSemanticSegmentation (Swin)",
                HFUperNet(UperNetForSemanticSegmentation(config)), own_loss=True)


@dataclass(frozen=True)
class PeerSpec:
    """How to get an architecture's peer: the module that must import, its package's name, the builder,
    and the encoder class the builder reads its configuration off (None: any)."""

    module: str
    package: str
    builder: Callable[[nn.Module, int, int], Peer]
    encoder: type | None = ResNet


_SMP = "segmentation_models_pytorch (and torchvision)"
_PEERS: dict[str, PeerSpec] = {
    "fcn": PeerSpec("torchvision", "torchvision", _fcn_peer),
    "deeplabv3": PeerSpec("torchvision", "torchvision", _deeplabv3_peer),
    "pspnet": PeerSpec("segmentation_models_pytorch", _SMP, _pspnet_peer),
    "deeplabv3plus": PeerSpec("segmentation_models_pytorch", _SMP, _deeplabv3plus_peer),
    "lraspp": PeerSpec("torchvision", "torchvision", _lraspp_peer, MobileNetV3),
    "segformer": PeerSpec("transformers", "transformers", _segformer_peer, MixTransformer),
    "upernet": PeerSpec("transformers", "transformers", _upernet_swin_peer, SwinTransformer),
}


def build_peer(arch: str, model: nn.Module, *, num_classes: int, in_channels: int,
               specs: Mapping[str, PeerSpec] | None = None) -> tuple[Peer | None, str]:
    """The peer of ``model`` (a segbench ``arch``) at the same size, or None and why there is none
    (no library has it, it is not installed, it cannot be configured like ours). Raises
    :class:`PeerFailed` when the library is installed but the peer does not import or build.
    ``specs``: the peers to choose from (default: the table above)."""
    specs = _PEERS if specs is None else specs
    if arch not in specs:
        return None, "no peer: " + NO_PEER.get(arch, "no other library here implements it")
    spec = specs[arch]
    if spec.encoder is not None and not isinstance(getattr(model, "encoder", None), spec.encoder):
        encoder = type(getattr(model, "encoder", None)).__name__
        return None, f"no peer for {arch} on a {encoder} encoder (the peer is set up with {spec.encoder.__name__})"
    missing = _importable(spec.module, spec.package)
    if missing:
        return None, f"no peer: {missing}"
    try:
        return spec.builder(model, num_classes, in_channels), ""
    except (AttributeError, IndexError, TypeError, ValueError, NotImplementedError) as err:
        return None, f"no peer: could not configure it from the segbench model ({type(err).__name__}: {err})"
    except ImportError as err:  # transformers imports its classes lazily: the class's own import fails here
        raise PeerFailed(f"{spec.module} import failed ({_failure(err)})") from err
    except Exception as err:  # noqa: BLE001 - the peer's failure, not the row's
        raise PeerFailed(f"{spec.module} peer could not be built ({_failure(err)})") from err
