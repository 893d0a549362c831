"""Which toolkit wrote a checkpoint, read off its keys, and its backbone in the encoder's own keys.

The layouts themselves are documented (and converted) in ``segbench.checkpoints.convert.cnn``, ``.segformer`` and
``.swin``; here only the signature key of each is matched.
"""

from __future__ import annotations

import re

from torch import Tensor

__all__ = ["detect_format", "encoder_keys", "HEAD_PREFIXES", "TORCHVISION_NAMED"]

StateDict = dict[str, Tensor]

# (source, encoder family, regex one of the file's keys must match); the first matching row wins, so
# Hugging Face's "encoder.block." precedes segbench's own "encoder." prefix.
_LAYOUTS: list[tuple[str, str | None, str]] = [
    ("hf", "mit", r"(segformer\.)?(encoder\.(patch_embeddings|block)|stages\.\d+\.(patch_embeddings|blocks))\."),
    ("hf", "swin", r"(backbone\.)?(swin\.)?embeddings\.patch_embeddings\."),
    ("segbench", None, r"encoder\."),
    ("nvlabs", "mit", r"(backbone\.)?patch_embed1\.proj\."),
    ("mmseg", "mit", r"(backbone\.)?layers\.\d+\.0\.projection\."),
    ("mmseg", "swin", r"(backbone\.)?(stages\.\d+\.blocks\.\d+\.attn\.w_msa|patch_embed\.projection)\."),
    ("microsoft", "swin", r"(backbone\.)?layers\.\d+\.blocks\.\d+\.attn\.qkv\."),
    ("torchvision", "resnet", r"(backbone\.)?layer1\.0\.conv1\.weight"),
    ("torchvision", "vgg", r"(backbone\.)?features\.0\.weight"),
]
HEAD_PREFIXES = ("decode_head.", "auxiliary_head.", "aux_classifier.")
# Encoder families whose parameter names are torchvision's: a torchvision file is already in their keys.
TORCHVISION_NAMED = ("resnet", "vgg", "mobilenetv3", "efficientnet")


def detect_format(state: StateDict) -> tuple[str, str | None, str] | None:
    """``(source, encoder family, scope)`` of a checkpoint from its keys, or None when no known layout
    matches. ``scope`` is "model" (the file has a segmentation head) or "encoder". torchvision's ResNet/VGG
    layout is also timm's and segbench's encoder layout; timm's Swin (merging layers at the start of the next
    stage) reads as "timm"; MMSegmentation's CNN checkpoints (``backbone.*`` + ``decode_head.*``) as "mmseg"."""
    for source, family, pattern in _LAYOUTS:
        if any(re.match(pattern, key) for key in state):
            break
    else:
        return None
    if source == "segbench":
        has_head = any(not k.startswith("encoder.") for k in state)
    else:  # torchvision's segmentation models: backbone.* + classifier.*
        has_head = any(k.startswith(HEAD_PREFIXES) for k in state) or (
            any(k.startswith("backbone.") for k in state) and any(k.startswith("classifier.") for k in state)
        )
    if source == "microsoft":
        merging = {int(m[1]) for k in state if (m := re.match(r"layers\.(\d+)\.downsample\.", k))}
        if merging and 0 not in merging:
            source = "timm"
    if family in ("resnet", "vgg") and any(k.startswith("decode_head.") for k in state):
        source = "mmseg"
    return source, family, "model" if has_head else "encoder"


def _hf_swin(state: StateDict) -> StateDict:
    """``SwinModel`` / ``SwinForImageClassification`` keys -> the ``backbone.swin.`` prefix of UperNet's,
    which the Swin converter reads; the ImageNet classifier is dropped."""
    renamed = {}
    for key, value in state.items():
        if key.startswith("swin."):
            renamed["backbone." + key] = value
        elif key.startswith(("embeddings.", "encoder.", "layernorm.")):
            renamed["backbone.swin." + key] = value
        elif not key.startswith("classifier."):
            renamed[key] = value
    return renamed


def encoder_keys(state: StateDict, source: str, family: str) -> StateDict:
    """The backbone tensors of a checkpoint in ``source``'s layout, in the encoder's own keys (before its
    ``adapt_state_dict``). Heads are dropped first, so a whole segmentation checkpoint gives its backbone."""
    from segbench.checkpoints.convert import segformer, swin

    state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    if family in TORCHVISION_NAMED:  # torchvision's (and timm's) names are the encoders' own
        if any(k.startswith("backbone.") for k in state):
            state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        return state
    if family == "mit":
        converter = {"hf": segformer.from_hf, "nvlabs": segformer.from_nvlabs, "mmseg": segformer.from_mmseg}[source]
        converted = converter(state)
    elif source == "hf":
        converted = swin.from_hf(_hf_swin(state))
    elif source == "mmseg":
        converted = swin.from_mmseg(state)
    else:  # microsoft, timm
        converted = swin.encoder_from_classification(state)
        if not any(re.fullmatch(r"(backbone\.)?norm\d\.weight", k) for k in state):
            # Not in the file: the encoder's adapt_state_dict starts them at identity, and the report says so.
            converted = {k: v for k, v in converted.items() if not re.fullmatch(r"encoder\.norm\d\.\w+", k)}
    return {k[len("encoder.") :]: v for k, v in converted.items() if k.startswith("encoder.")}
