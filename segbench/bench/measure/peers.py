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
| ``pspnet`` | segmentation_models_pytorch ``PSPNet`` (encoder ``resnet*``), the paper's head in smp's modules | segbench's |
| ``deeplabv3plus`` | segmentation_models_pytorch ``DeepLabV3Plus``, the paper's decoder in smp's modules | segbench's |
| ``lraspp`` (MobileNetV3) | torchvision ``LRASPP`` on ``mobilenet_v3_*(dilated=...).features``, our taps | segbench's |
| ``segformer`` | transformers ``SegformerForSemanticSegmentation`` | its own |
| ``upernet`` (Swin) | transformers ``UperNetForSemanticSegmentation`` with a Swin backbone | its own |

torchvision's ResNet is built with ``replace_stride_with_dilation`` where torchvision allows it
(Bottleneck ResNets); its BasicBlock (ResNet-18/34) refuses dilation and it has no multi-grid, so there
the strides, paddings and dilations of its convolutions are set to segbench's, conv by conv (the module
names are the same): the same weights computing the same function, which the note on the row says.
smp's ResNet encoders get segbench's geometry the same way, and smp's PSPNet and DeepLabV3Plus heads, each
a variant of the paper's, are rebuilt to segbench's layout from smp's own modules (below), so that every
peer trains and infers segbench's parameters.
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


def _match_geometry(encoder: nn.Module, net: nn.Module, library: str) -> list[str]:
    """Set the stride, padding and dilation of ``net``'s convolutions to those of segbench's ``encoder``
    of the same name (the same kernel shapes: only where each samples changes); the names it changed."""
    ours, theirs = _conv_geometry(encoder), _conv_geometry(net)
    if set(ours) - set(theirs):
        raise ValueError(f"{library} lacks convolutions segbench's has: {sorted(set(ours) - set(theirs))[:3]}")
    differs = [name for name, geometry in ours.items() if theirs[name] != geometry]
    convs = dict(net.named_modules())
    for name in differs:
        conv = convs[name]
        conv.stride, conv.padding, conv.dilation = ours[name]
    return differs


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
    differs = _match_geometry(encoder, net, "torchvision's ResNet")
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
# smp's PSPNet and DeepLabV3Plus are each a variant of the paper's head; the peer is smp's model (its
# encoder, forward and interpolation) with the head rebuilt to segbench's layout from smp's own modules
# (``Conv2dReLU``: conv, BN, ReLU), and the changes listed in the row's note, as torchvision's ResNet gets
# segbench's geometry conv by conv above. So both train and infer the same parameters and FLOPs; what the
# ratio compares is the code.


def _smp_resnet(model: nn.Module, net: nn.Module) -> list[str]:
    """Give smp's ResNet encoder segbench's strides and dilations (smp dilates every conv of a stage, its
    first block's 3x3 included, and has no multi-grid); what was changed, for the note."""
    encoder = model.encoder
    differs = _match_geometry(encoder, net.encoder, "smp's ResNet encoder")
    if not differs:
        return []
    why = "smp dilates a stage's first block too" + (
        f" and has no multi-grid {list(encoder.multi_grid)}" if encoder.multi_grid is not None else "")
    return [f"{why}: the stride, padding and dilation of {len(differs)} of its encoder's convs are set to segbench's"]


def _smp_aux_head(model: nn.Module, num_classes: int) -> tuple[nn.Module | None, list[str]]:
    """torchvision's ``FCNHead`` (segbench's auxiliary head's layout) where ours has one: smp has no
    auxiliary segmentation head (its ``aux_params`` is an image classifier)."""
    if model.aux_head is None:
        return None, []
    from torchvision.models.segmentation.fcn import FCNHead

    return FCNHead(model.encoder.out_channels[-2], num_classes), [
        "smp has no auxiliary segmentation head: torchvision's FCNHead on its layer3, in training only, as ours"]


class SMPSegmenter(PeerModel):
    """A segmentation_models_pytorch model: its masks, at input resolution; in training mode with an
    ``aux_head`` (on the encoder's stage before last, as ours), ``{"out", "aux"}``."""

    def __init__(self, net: nn.Module, aux_head: nn.Module | None = None, aux_weight: float = 0.0):
        super().__init__(net)
        self.aux_head = aux_head
        self.aux_weight = aux_weight if aux_head is not None else 0.0

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        if self.aux_head is None or not self.training:
            return self.net(x)
        features = self.net.encoder(x)  # smp's forward, written out to reach the features
        out = self.net.segmentation_head(self.net.decoder(features))
        return {"out": out, "aux": resize(self.aux_head(features[-2]), x.shape[-2:])}


def _smp_options(model: nn.Module, in_channels: int, num_classes: int) -> dict:
    return dict(encoder_name=f"resnet{model.encoder.depth}", encoder_weights=None, in_channels=in_channels,
                classes=num_classes)


def _pspnet_peer(model: nn.Module, num_classes: int, in_channels: int) -> Peer:
    """smp's ``PSPNet`` at our output stride with the paper's head: a 3x3 bottleneck (smp: 1x1), BN in the
    1x1 bin too (smp: a biased conv without), a 1x1 classifier (smp: 3x3). smp concatenates the bins
    before the feature (ours after: the same work, the bottleneck's input channels permuted), drops whole
    channels (``Dropout2d``; ours elements) and upsamples with ``align_corners=True`` (ours False): the
    same work."""
    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch.base.modules import Conv2dReLU

    bins = tuple(stage[0].output_size for stage in model.ppm.stages)
    if bins != (1, 2, 3, 6):
        raise ValueError(f"smp's PSPNet pools to bins (1, 2, 3, 6) only, not {bins}")
    stride, width = model.encoder.output_stride, model.bottleneck[0].out_channels
    net = smp.PSPNet(**_smp_options(model, in_channels, num_classes), encoder_depth=5, output_stride=stride,
                     upsampling=stride, psp_out_channels=width, psp_dropout=model.dropout.p)
    channels = model.encoder.out_channels[-1]
    net.decoder.psp.blocks[0].pool[1] = Conv2dReLU(channels, channels // len(bins), 1)
    net.decoder.conv = Conv2dReLU(model.ppm.out_channels, width, 3, padding=1)
    net.segmentation_head[0] = nn.Conv2d(width, num_classes, 1)
    aux, aux_note = _smp_aux_head(model, num_classes)
    note = (["the paper's head in smp's modules: 3x3 bottleneck (smp: 1x1), BN in the 1x1 bin, 1x1 classifier "
             "(smp: 3x3)"] + _smp_resnet(model, net) + aux_note)
    return Peer("segmentation_models_pytorch PSPNet", SMPSegmenter(net, aux, model.aux_weight), note="; ".join(note))


def _deeplabv3plus_peer(model: nn.Module, num_classes: int, in_channels: int) -> Peer:
    """smp's ``DeepLabV3Plus`` with the paper's decoder (Fig. 2): no conv after the ASPP (smp: a separable
    3x3), two 3x3 convs after the concatenation (smp: one separable). smp upsamples with
    ``align_corners=True`` (ours False: the same work). segbench's separable variant normalises between
    depthwise and pointwise, smp's does not: no peer for it."""
    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch.base.modules import Conv2dReLU

    from segbench.models.architectures.aspp import SeparableConvBNReLU

    if isinstance(model.aspp.convs[1], SeparableConvBNReLU):
        raise ValueError("segbench's separable convs have BN and ReLU between depthwise and pointwise, smp's none")
    width = model.aspp.out_channels
    net = smp.DeepLabV3Plus(
        **_smp_options(model, in_channels, num_classes), encoder_output_stride=model.encoder.output_stride,
        decoder_channels=width, decoder_atrous_rates=_atrous_rates(model.aspp), decoder_aspp_separable=False,
        decoder_aspp_dropout=model.aspp.project[-1].p,
    )
    net.decoder.aspp = net.decoder.aspp[0]
    fused = width + model.reduce[0].out_channels
    net.decoder.block2 = nn.Sequential(Conv2dReLU(fused, width, 3, padding=1), Conv2dReLU(width, width, 3, padding=1))
    aux, aux_note = _smp_aux_head(model, num_classes)
    note = (["the paper's decoder in smp's modules: no conv after the ASPP (smp: a separable 3x3), two 3x3 convs "
             "after the concatenation (smp: one separable)"] + _smp_resnet(model, net) + aux_note)
    return Peer("segmentation_models_pytorch DeepLabV3Plus", SMPSegmenter(net, aux, model.aux_weight),
                note="; ".join(note))


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
