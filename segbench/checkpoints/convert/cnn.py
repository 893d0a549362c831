"""CNN checkpoints from torchvision, timm and MMSegmentation, mapped onto segbench's keys.

segbench's layouts: every model keeps its backbone under ``encoder.`` with the publisher's own names
(torchvision's for ResNet and VGG). Heads: ``fcn`` = ``head.0`` (3x3 conv) / ``head.1`` (BN) /
``classifier``; ``deeplabv3`` = ``aspp.convs.*`` / ``aspp.project.*`` (torchvision's ASPP indices) /
``head.0`` / ``head.1`` / ``classifier``; ``pspnet`` = ``ppm.stages.{i}.1`` (1x1 conv) / ``.2`` (BN) /
``bottleneck.0`` / ``bottleneck.1`` / ``classifier``; auxiliary heads ``aux_head.0`` / ``.1`` / ``.4``.

Foreign layouts, as written in the sources:

``torchvision`` ImageNet backbones. ResNet (``resnet18/34/50/101``): ``conv1``, ``bn1``,
``layer{1-4}.{b}.conv1/bn1/conv2/bn2[/conv3/bn3]``, ``layer{i}.0.downsample.0`` (1x1 conv) / ``.1`` (BN),
``fc`` -> ``encoder.`` + the same name (``fc`` dropped). VGG16 / VGG16-BN: ``features.{i}`` (torchvision's
module indices), ``classifier.0`` / ``classifier.3`` (fc6/fc7 as Linear), ``classifier.6`` (ImageNet
classes) -> ``encoder.features.{i}``; the VGG encoder's own ``adapt_state_dict`` turns fc6/fc7 into
convolutions for FCN (7x7) and DeepLab-LargeFOV (decimated 3x3), and they are dropped for SegNet.

``torchvision`` segmentation models (``torchvision.models.segmentation``):

- ``fcn_resnet50/101``: ``backbone.*`` (the ResNet's names, up to layer4) -> ``encoder.*``;
  ``classifier.0`` (3x3 conv) / ``classifier.1`` (BN) / ``classifier.4`` (1x1) -> ``head.0`` / ``head.1`` /
  ``classifier``; ``aux_classifier.{0,1,4}`` -> ``aux_head.{0,1,4}``.
- ``deeplabv3_resnet50/101``: ``classifier.0`` is the ASPP: ``classifier.0.convs.0.{0,1}`` (1x1, BN),
  ``convs.{1,2,3}.{0,1}`` (atrous 3x3, BN), ``convs.4.{1,2}`` (image pooling 1x1, BN; index 0 is the pool),
  ``classifier.0.project.{0,1}`` -> ``aspp.convs.*`` / ``aspp.project.*``; ``classifier.1`` (3x3) /
  ``classifier.2`` (BN) / ``classifier.4`` (1x1) -> ``head.0`` / ``head.1`` / ``classifier``;
  ``aux_classifier`` as for FCN. torchvision trains v3 without multi-grid: build with ``multi_grid=None``
  for its exact function.

``timm`` ResNets (``resnet18/34/50/101`` and their ``.tv_in1k``/``.a1_in1k`` tags): torchvision's names,
``fc`` included. timm's ``resnet*c``/``*d`` variants (deep stem ``conv1.{0,1,3,4,6}``, average-pool
shortcut ``downsample.{1,2}``) are different networks and are refused.

``mmseg`` (MMSegmentation 0.x/1.x checkpoints, ``{"meta", "state_dict"}``): ``backbone.*`` is
torchvision-named for ``type='ResNet'`` (the ``r50b``/``r101b`` configs, initialised from torchvision)
but has a deep stem ``backbone.stem.{0,1,3,4,6,7}`` for the default ``ResNetV1c`` (``r50``/``r101``
configs): three 3x3 convs instead of torchvision's 7x7, so those backbones cannot map and are refused.
Heads (``mmseg/models/decode_heads``; ``ConvModule`` = ``.conv`` + ``.bn``):

- ``PSPHead``: ``decode_head.psp_modules.{i}.1.conv/bn`` (index 0 is the pool) -> ``ppm.stages.{i}.1/2``;
  ``decode_head.bottleneck.conv/bn`` (3x3, 512) -> ``bottleneck.0/1``; ``decode_head.conv_seg`` ->
  ``classifier``. The same network as segbench's ``pspnet``: mapped.
- ``FCNHead`` as auxiliary head (``num_convs=1``, ``concat_input=False``, 256 channels):
  ``auxiliary_head.convs.0.conv/bn`` -> ``aux_head.0/1``, ``auxiliary_head.conv_seg`` -> ``aux_head.4``.
- ``FCNHead`` as decode head in the FCN configs (``num_convs=2``, ``concat_input=True``:
  ``decode_head.convs.{0,1}`` and ``decode_head.conv_cat``): two convs plus a concat conv, unlike
  torchvision's one-conv head that segbench's ``fcn`` implements: refused (a one-conv head maps).
- ``ASPPHead`` (DeepLab v3) and ``DepthwiseSeparableASPPHead`` (v3+): ``decode_head.image_pool.1``,
  ``decode_head.aspp_modules.{i}``, then ``decode_head.bottleneck``, a 3x3 conv (512) over the concat,
  with no 1x1 projection (v3+: ``c1_bottleneck``, ``sep_bottleneck.{0,1}.depthwise_conv/pointwise_conv``).
  The paper's and torchvision's ASPP project with a 1x1 conv (256) and then apply a 3x3 conv: no
  one-to-one mapping exists, refused.

Every converter keeps keys it does not know (``convert_with_report`` lists them as unexpected), drops
auxiliary-head keys when the model is built without one, and drops the classifier(s) when ``num_classes``
differs from the checkpoint's (fine-tuning on new classes).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from segbench.models.encoders.resnet import RESNET_DEPTHS
from segbench.checkpoints.convert import register_converter
from segbench.checkpoints.io import unwrap_state_dict

__all__ = ["from_torchvision", "from_timm", "from_mmseg", "RESNET_ARCHS", "VGG_ARCHS"]

StateDict = dict[str, Tensor]
Rule = tuple[str, str]  # (regex matched against the whole key, replacement with \1 groups)

RESNET_ARCHS = ("fcn", "deeplabv2", "deeplabv3", "deeplabv3plus", "pspnet")
VGG_ARCHS = ("fcn32s", "fcn16s", "fcn8s", "deeplabv1", "segnet")

_BACKBONE: list[Rule] = [(r"backbone\.(.+)", r"encoder.\1")]
_TORCHVISION_AUX: list[Rule] = [(r"aux_classifier\.([014])\.(.+)", r"aux_head.\1.\2")]
_TORCHVISION_HEADS: dict[str, list[Rule]] = {
    "fcn": [
        (r"classifier\.([01])\.(.+)", r"head.\1.\2"),
        (r"classifier\.4\.(.+)", r"classifier.\1"),
    ],
    "deeplabv3": [
        (r"classifier\.0\.(convs|project)\.(.+)", r"aspp.\1.\2"),
        (r"classifier\.1\.(.+)", r"head.0.\1"),
        (r"classifier\.2\.(.+)", r"head.1.\1"),
        (r"classifier\.4\.(.+)", r"classifier.\1"),
    ],
}
_MMSEG_AUX: list[Rule] = [
    (r"auxiliary_head\.convs\.0\.conv\.(.+)", r"aux_head.0.\1"),
    (r"auxiliary_head\.convs\.0\.bn\.(.+)", r"aux_head.1.\1"),
    (r"auxiliary_head\.conv_seg\.(.+)", r"aux_head.4.\1"),
]
_MMSEG_HEADS: dict[str, list[Rule]] = {
    "pspnet": [
        (r"decode_head\.psp_modules\.(\d+)\.1\.conv\.(.+)", r"ppm.stages.\1.1.\2"),
        (r"decode_head\.psp_modules\.(\d+)\.1\.bn\.(.+)", r"ppm.stages.\1.2.\2"),
        (r"decode_head\.bottleneck\.conv\.(.+)", r"bottleneck.0.\1"),
        (r"decode_head\.bottleneck\.bn\.(.+)", r"bottleneck.1.\1"),
        (r"decode_head\.conv_seg\.(.+)", r"classifier.\1"),
    ],
    "fcn": [
        (r"decode_head\.convs\.0\.conv\.(.+)", r"head.0.\1"),
        (r"decode_head\.convs\.0\.bn\.(.+)", r"head.1.\1"),
        (r"decode_head\.conv_seg\.(.+)", r"classifier.\1"),
    ],
}
_MMSEG_ASPP_MISMATCH = (
    "MMSegmentation's {head} fuses the ASPP branches with one 3x3 conv ('decode_head.bottleneck', 512 "
    "channels) and has no 1x1 projection, whereas segbench's {arch} follows the paper and torchvision (1x1 "
    "projection to 256, then a 3x3 conv): no one-to-one mapping exists. Its backbone alone can still be "
    "used if it is a plain ResNet: pass {{k[9:]: v for k, v in sd.items() if k.startswith('backbone.')}} "
    "to segbench.models.encoders.load_backbone_weights."
)


def _rename(state: StateDict, rules: list[Rule]) -> StateDict:
    """Apply the first matching rule to every key; keys no rule matches are kept as they are."""
    out: StateDict = {}
    for key, tensor in state.items():
        for pattern, replacement in rules:
            if re.fullmatch(pattern, key):
                key = re.sub(f"^{pattern}$", replacement, key)
                break
        out[key] = tensor
    return out


def _target(arch: str, num_classes: int | None, model_options: dict[str, Any]) -> nn.Module:
    """The model the converted dict is for, built on the meta device (no memory, no init cost)."""
    from segbench.models.registry import build_model

    with torch.device("meta"):
        return build_model(arch, num_classes or 1, **model_options)


def _check_plain_resnet(backbone: StateDict, source: str) -> None:
    if any(k.startswith("stem.") for k in backbone) or "conv1.0.weight" in backbone:
        raise ValueError(
            f"the {source} checkpoint's ResNet has a deep stem (three 3x3 convs: MMSegmentation's ResNetV1c/V1d, "
            "timm's resnet*c/*d), but segbench's ResNet has torchvision's single 7x7 stem conv, so the weights "
            "cannot map. Use a plain-ResNet checkpoint (torchvision or timm 'resnet50', MMSegmentation's "
            "'r50b'/'r101b' configs)."
        )
    if any(re.fullmatch(r"layer\d\.0\.downsample\.2\.weight", k) for k in backbone):
        raise ValueError(
            f"the {source} checkpoint's ResNet uses average-pool shortcuts (downsample.0 pool, .1 conv, .2 BN: "
            "ResNet-D), which segbench's torchvision-style ResNet does not have"
        )


def _resnet_name(backbone: StateDict) -> str | None:
    """Which torchvision ResNet a backbone state dict holds, from its block counts."""
    counts = []
    for stage in range(1, 5):
        blocks = {int(m.group(1)) for k in backbone if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        counts.append(max(blocks) + 1 if blocks else 0)
    kind = "bottleneck" if "layer1.0.conv3.weight" in backbone else "basic"
    for depth, (block, stages) in RESNET_DEPTHS.items():
        if (block, stages) == (kind, tuple(counts)):
            return f"resnet{depth}"
    return None


def _adapt_encoder(state: StateDict, model: nn.Module, source: str) -> StateDict:
    """Let the encoder adapt its part (``adapt_state_dict``: ResNet drops fc, VGG convolutionalizes fc6/fc7,
    both adapt the stem to ``in_channels``), after checking the checkpoint is the backbone the model has."""
    backbone = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    rest = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    encoder = model.encoder
    if hasattr(encoder, "depth"):  # a ResNet
        _check_plain_resnet(backbone, source)
        if "conv1.weight" not in backbone:
            raise ValueError(
                f"the {source} checkpoint has no ResNet backbone keys (conv1.weight, layer1.*, ...; first keys: "
                f"{list(backbone)[:3] or list(rest)[:3]}); the model's encoder is resnet{encoder.depth}"
            )
        found, wanted = _resnet_name(backbone), f"resnet{encoder.depth}"
        if found is not None and found != wanted:
            raise ValueError(
                f"the {source} checkpoint holds a {found} but the model's encoder is {wanted}; pass encoder={found!r}"
            )
    if hasattr(encoder, "batch_norm") and any(k.startswith("features.") for k in backbone):  # a VGG
        has_bn = "features.1.running_mean" in backbone
        if has_bn != encoder.batch_norm:
            found, wanted = ("vgg16_bn", "vgg16") if has_bn else ("vgg16", "vgg16_bn")
            raise ValueError(
                f"the {source} checkpoint is {found} but the model's encoder is {wanted}; pass encoder={found!r}"
            )
    backbone = encoder.adapt_state_dict(backbone)
    if hasattr(encoder, "fc_width") and encoder.fc_width is None:  # VGG without fc6/fc7 (SegNet): no place
        backbone = {k: v for k, v in backbone.items() if not k.startswith("classifier.")}
    return {**{f"encoder.{k}": v for k, v in backbone.items()}, **rest}


def _fit_heads(state: StateDict, model: nn.Module, num_classes: int | None) -> StateDict:
    """Drop auxiliary-head keys the model has no place for, and classifiers for a different class count."""
    if getattr(model, "aux_head", None) is None:
        state = {k: v for k, v in state.items() if not k.startswith("aux_head.")}
    weight = state.get("classifier.weight")
    if num_classes is not None and weight is not None and weight.shape[0] != num_classes:
        state = {k: v for k, v in state.items() if not (k.startswith("classifier.") or k.startswith("aux_head.4."))}
    return state


def _backbone_only(state: StateDict) -> StateDict:
    """A bare ImageNet backbone file (no ``backbone.`` prefix) -> ``encoder.*``; for a whole segmentation
    checkpoint whose head this converter does not map, keep its backbone only."""
    if any(k.startswith("backbone.") for k in state):
        return {f"encoder.{k[len('backbone.') :]}": v for k, v in state.items() if k.startswith("backbone.")}
    return {f"encoder.{k}": v for k, v in state.items()}


def from_torchvision(
    state_dict: StateDict, *, num_classes: int | None = None, arch: str, **model_options: Any
) -> StateDict:
    """torchvision ImageNet ResNet/VGG files (encoder only), or whole ``fcn_resnet*`` -> ``fcn`` and
    ``deeplabv3_resnet*`` -> ``deeplabv3`` files; for other archs a whole file contributes its backbone."""
    state = unwrap_state_dict(state_dict)
    model = _target(arch, num_classes, model_options)
    if arch in _TORCHVISION_HEADS and any(k.startswith("backbone.") for k in state):
        if arch == "deeplabv3" and model.encoder.multi_grid is not None:
            warnings.warn(
                "torchvision's deeplabv3 has no multi-grid: build with multi_grid=None to reproduce its outputs",
                stacklevel=2,
            )
        state = _rename(state, _BACKBONE + _TORCHVISION_HEADS[arch] + _TORCHVISION_AUX)
    else:
        state = _backbone_only(state)
    return _fit_heads(_adapt_encoder(state, model, "torchvision"), model, num_classes)


def from_timm(
    state_dict: StateDict, *, num_classes: int | None = None, arch: str, **model_options: Any
) -> StateDict:
    """timm ResNet files (torchvision's names, ``fc`` dropped) -> ``encoder.*`` of a ResNet-based arch."""
    state = _backbone_only(unwrap_state_dict(state_dict))
    return _adapt_encoder(state, _target(arch, num_classes, model_options), "timm")


def from_mmseg(
    state_dict: StateDict, *, num_classes: int | None = None, arch: str, **model_options: Any
) -> StateDict:
    """MMSegmentation PSPNet (and one-conv FCN) checkpoints with a plain ResNet backbone; refuses the heads
    and backbones that differ (see the module docstring)."""
    state = unwrap_state_dict(state_dict)
    if arch in ("deeplabv3", "deeplabv3plus"):
        head = "DepthwiseSeparableASPPHead" if any(".sep_bottleneck." in k for k in state) else "ASPPHead"
        raise ValueError(_MMSEG_ASPP_MISMATCH.format(head=head, arch=arch))
    if arch == "fcn" and any(k.startswith(("decode_head.convs.1.", "decode_head.conv_cat.")) for k in state):
        raise ValueError(
            "this MMSegmentation FCN checkpoint's decode head has several convs and/or concat_input "
            "('decode_head.convs.1', 'decode_head.conv_cat': the fcn_r50-d8 configs), whereas segbench's fcn "
            "has torchvision's one-conv FCN head; only a num_convs=1, concat_input=False head maps"
        )
    model = _target(arch, num_classes, model_options)
    state = _rename(state, _BACKBONE + _MMSEG_HEADS[arch] + _MMSEG_AUX)
    return _fit_heads(_adapt_encoder(state, model, "mmseg"), model, num_classes)


def _bind(fn, arch: str):
    """The registered form ``fn(state_dict, *, num_classes=None, **model_options)`` for one architecture."""

    def convert(state_dict: StateDict, *, num_classes: int | None = None, **model_options: Any) -> StateDict:
        return fn(state_dict, num_classes=num_classes, arch=arch, **model_options)

    convert.__name__ = f"{fn.__name__}_{arch}"
    convert.__doc__ = fn.__doc__
    return convert


for _arch in RESNET_ARCHS + VGG_ARCHS:
    register_converter("torchvision", _arch)(_bind(from_torchvision, _arch))
for _arch in RESNET_ARCHS:
    register_converter("timm", _arch)(_bind(from_timm, _arch))
for _arch in ("fcn", "pspnet", "deeplabv3", "deeplabv3plus"):
    register_converter("mmseg", _arch)(_bind(from_mmseg, _arch))
