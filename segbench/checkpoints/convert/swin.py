"""Swin + UPerNet checkpoints from Hugging Face, Microsoft, MMSegmentation and timm (and back).

Every format is first mapped onto one canonical layout, that of Microsoft's own segmentation release
(Swin-Transformer-Semantic-Segmentation, built on MMSegmentation 0.x), and from there onto segbench's.
Layouts, with ``i`` a stage, ``j`` a block, ``b`` a pyramid-pooling bin, ``l`` an FPN level:

segbench       ``encoder.patch_embed.{proj,norm}``, ``encoder.layers.{i}.blocks.{j}.{norm1, attn.qkv, attn.proj,
               attn.relative_position_bias_table, norm2, mlp.fc1, mlp.fc2}``, ``encoder.layers.{i}.downsample.
               {norm,reduction}`` (end of stages 0..2), ``encoder.norm{i}``; head: ``decode_head.ppm.{b}.1.{0,1}``,
               ``decode_head.ppm_bottleneck``, ``decode_head.{lateral_convs,fpn_convs}.{l}``, ``decode_head.fuse``
               (conv ``.0``, BN ``.1``), ``classifier``, ``aux_head.{0 conv, 1 BN, 4 classifier}``.
canonical      ``backbone.`` + the encoder keys; ``decode_head.psp_modules.{b}.1``, ``.bottleneck``,
               ``.lateral_convs.{l}``, ``.fpn_convs.{l}``, ``.fpn_bottleneck`` (each ``.conv`` + ``.bn``),
               ``decode_head.conv_seg``, ``auxiliary_head.convs.0.{conv,bn}``, ``auxiliary_head.conv_seg``.
microsoft      the canonical layout (segmentation release), or an ImageNet classification checkpoint
               ``{"model": ...}``: the encoder keys without ``backbone.`` and without ``norm{i}``, plus ``norm``,
               ``head`` and the buffers ``relative_position_index`` / ``attn_mask``.
mmseg          canonical head; backbone ``patch_embed.projection``, ``stages.{i}`` for ``layers.{i}``,
               ``attn.w_msa.{qkv,proj,relative_position_bias_table,relative_position_index}``,
               ``ffn.layers.0.0`` / ``ffn.layers.1`` for ``mlp.fc1`` / ``mlp.fc2`` (its ImageNet files: the backbone
               alone, without ``backbone.``, plus ``norm``). Its PatchMerging gathers the 2x2 neighbourhood with
               ``nn.Unfold``: feature index ``c * 4 + (2 * row + col)`` instead of Swin's ``k * C + c`` with k
               over [(0,0), (1,0), (0,1), (1,1)]; neighbour k sits at unfold position [0, 2, 1, 3][k], so
               ``downsample.reduction`` columns and ``downsample.norm`` entries are permuted.
timm           (>= 0.9) the classification layout with each merging layer at the START of the next stage:
               ``layers.{i+1}.downsample`` holds Swin's ``layers.{i}.downsample``; ``head.fc``, ``norm``. timm < 0.9
               (merging at the end, ``head``) is Microsoft's layout and is recognised as such.
hf             ``UperNetForSemanticSegmentation``: ``backbone.swin.embeddings.{patch_embeddings.projection,norm}``,
               ``backbone.swin.encoder.layers.{i}.blocks.{j}.{layernorm_before, attention.{q,k,v,o}_proj,
               attention.relative_position_bias.relative_position_bias_table, layernorm_after, mlp.fc1, mlp.fc2}``
               (transformers >= 5; the Hub files of 4.x say ``backbone.embeddings``, ``backbone.encoder``,
               ``attention.self.{query,key,value}``, ``attention.output.dense``, ``intermediate.dense``,
               ``output.dense`` and are read too), ``backbone.hidden_states_norms.stage{i+1}``, head as canonical
               with ``batch_norm`` for ``bn`` and ``classifier`` for ``conv_seg``. q, k, v are concatenated
               into ``qkv``; HF's merging order is Swin's.

Encoder-only checkpoints (ImageNet classification) give the encoder; the four output norms they lack start
at LayerNorm's identity (weight 1, bias 0), as the segmentation code initialises them. A ``num_classes``
other than the checkpoint's leaves both classifiers out (they keep their initialisation: fine-tuning to a
new label set). ``to_format`` writes the microsoft, mmseg and timm layouts back out.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from segbench.checkpoints.convert import register_converter

from segbench.checkpoints.io import unwrap_state_dict

__all__ = ["to_format", "encoder_from_classification"]

# Prefix templates (``{}`` = a number), canonical <-> each format; unmatched keys pass through unchanged.
_SEGBENCH = [
    ("encoder.", "backbone."),
    ("decode_head.ppm.{}.1.0.", "decode_head.psp_modules.{}.1.conv."),
    ("decode_head.ppm.{}.1.1.", "decode_head.psp_modules.{}.1.bn."),
    ("decode_head.ppm_bottleneck.0.", "decode_head.bottleneck.conv."),
    ("decode_head.ppm_bottleneck.1.", "decode_head.bottleneck.bn."),
    ("decode_head.lateral_convs.{}.0.", "decode_head.lateral_convs.{}.conv."),
    ("decode_head.lateral_convs.{}.1.", "decode_head.lateral_convs.{}.bn."),
    ("decode_head.fpn_convs.{}.0.", "decode_head.fpn_convs.{}.conv."),
    ("decode_head.fpn_convs.{}.1.", "decode_head.fpn_convs.{}.bn."),
    ("decode_head.fuse.0.", "decode_head.fpn_bottleneck.conv."),
    ("decode_head.fuse.1.", "decode_head.fpn_bottleneck.bn."),
    ("classifier.", "decode_head.conv_seg."),
    ("aux_head.0.", "auxiliary_head.convs.0.conv."),
    ("aux_head.1.", "auxiliary_head.convs.0.bn."),
    ("aux_head.4.", "auxiliary_head.conv_seg."),
]
_MMSEG = [
    ("backbone.patch_embed.projection.", "backbone.patch_embed.proj."),
    ("backbone.stages.{}.blocks.{}.attn.w_msa.", "backbone.layers.{}.blocks.{}.attn."),
    ("backbone.stages.{}.blocks.{}.ffn.layers.0.0.", "backbone.layers.{}.blocks.{}.mlp.fc1."),
    ("backbone.stages.{}.blocks.{}.ffn.layers.1.", "backbone.layers.{}.blocks.{}.mlp.fc2."),
    ("backbone.stages.", "backbone.layers."),
]
_HF_BLOCK = "backbone.swin.encoder.layers.{}.blocks.{}."
_SW_BLOCK = "backbone.layers.{}.blocks.{}."
_HF = [
    ("backbone.swin.embeddings.patch_embeddings.projection.", "backbone.patch_embed.proj."),
    ("backbone.swin.embeddings.norm.", "backbone.patch_embed.norm."),
    (_HF_BLOCK + "layernorm_before.", _SW_BLOCK + "norm1."),
    (_HF_BLOCK + "layernorm_after.", _SW_BLOCK + "norm2."),
    (_HF_BLOCK + "attention.o_proj.", _SW_BLOCK + "attn.proj."),
    (_HF_BLOCK + "attention.relative_position_bias.", _SW_BLOCK + "attn."),
    ("backbone.swin.encoder.layers.", "backbone.layers."),
    *[(f"backbone.hidden_states_norms.stage{k + 1}.", f"backbone.norm{k}.") for k in range(8)],
    ("decode_head.classifier.", "decode_head.conv_seg."),
    ("auxiliary_head.classifier.", "auxiliary_head.conv_seg."),
]
# transformers 4.x names (the Hub files) -> 5.x names, as substrings; order matters ("output.dense" last).
_HF_V4 = [
    (r"^backbone\.(embeddings|encoder)\.", r"backbone.swin.\1."),
    (r"attention\.self\.query\.", "attention.q_proj."),
    (r"attention\.self\.key\.", "attention.k_proj."),
    (r"attention\.self\.value\.", "attention.v_proj."),
    (r"attention\.self\.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),
    (r"attention\.output\.dense\.", "attention.o_proj."),
    (r"intermediate\.dense\.", "mlp.fc1."),
    (r"\boutput\.dense\.", "mlp.fc2."),
]
_BUFFERS = ("relative_position_index", "attn_mask")
_UNFOLD_ORDER = [0, 2, 1, 3]  # unfold position of Swin's neighbours (0,0), (1,0), (0,1), (1,1); self-inverse


def _compile(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{\}", r"(\d+)"))


def _fill(template: str, numbers: tuple[str, ...]) -> str:
    return template.replace("{}", "%s") % numbers if numbers else template


def _rename(state: dict[str, Tensor], rules: list[tuple[str, str]], reverse: bool = False) -> dict[str, Tensor]:
    """Rename key prefixes by the first matching (source, target) template; ``reverse`` maps target -> source."""
    pairs = [(_compile(b if reverse else a), b if not reverse else a) for a, b in rules]
    out = {}
    for key, value in state.items():
        for pattern, target in pairs:
            match = pattern.match(key)
            if match:
                key = _fill(target, match.groups()) + key[match.end() :]
                break
        out[key] = value
    return out


def _drop_buffers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if not k.endswith(_BUFFERS)}


def _permute_neighbours(tensor: Tensor, to_unfold: bool) -> Tensor:
    """Reorder the last (4C) dimension between Swin's concat layout (``k * C + c``, k a neighbour) and
    MMSegmentation's unfold layout (``c * 4 + q``, q an unfold position)."""
    *lead, features = tensor.shape
    channels = features // 4
    if to_unfold:
        grouped = tensor.reshape(*lead, 4, channels)[..., _UNFOLD_ORDER, :]
    else:
        grouped = tensor.reshape(*lead, channels, 4)[..., _UNFOLD_ORDER]
    return grouped.transpose(-1, -2).reshape(*lead, features)


def _merge_layout(state: dict[str, Tensor], to_unfold: bool) -> dict[str, Tensor]:
    """Permute the merging layers' 4C inputs (``reduction`` columns, ``norm`` entries) between layouts."""
    merging = re.compile(r".*\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)$")
    return {k: _permute_neighbours(v, to_unfold) if merging.match(k) else v for k, v in state.items()}


def _with_output_norms(canonical: dict[str, Tensor]) -> dict[str, Tensor]:
    """Add identity LayerNorms ``backbone.norm{i}`` where a classification checkpoint has none."""
    out = dict(canonical)
    for key, value in canonical.items():
        match = re.fullmatch(r"backbone\.layers\.(\d+)\.blocks\.0\.norm1\.weight", key)
        if match and f"backbone.norm{match[1]}.weight" not in canonical:
            out[f"backbone.norm{match[1]}.weight"] = torch.ones_like(value)
            out[f"backbone.norm{match[1]}.bias"] = torch.zeros_like(value)
    return out


def _to_segbench(canonical: dict[str, Tensor], num_classes: int | None) -> dict[str, Tensor]:
    state = _rename(_drop_buffers(canonical), _SEGBENCH, reverse=True)
    head = state.get("classifier.weight")
    if num_classes is not None and head is not None and head.shape[0] != num_classes:
        # A new label set: leave both classifiers to their initialisation (the report lists them as missing).
        state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "aux_head.4."))}
    return state


def _microsoft_to_canonical(state: dict[str, Tensor]) -> dict[str, Tensor]:
    if any(k.startswith("backbone.") for k in state):
        return state  # the segmentation release is the canonical layout
    backbone = {f"backbone.{k}": v for k, v in state.items() if not k.startswith(("head.", "norm."))}
    return _with_output_norms(_drop_buffers(backbone))


def _timm_to_canonical(state: dict[str, Tensor]) -> dict[str, Tensor]:
    moved = any(re.match(r"layers\.\d+\.downsample\.", k) for k in state) and not any(
        k.startswith("layers.0.downsample.") for k in state
    )
    if not moved:  # timm < 0.9 kept Microsoft's layout
        return _microsoft_to_canonical({k.replace("head.fc.", "head."): v for k, v in state.items()})
    shifted = {
        re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) - 1}.downsample.", k): v
        for k, v in state.items()
    }
    return _microsoft_to_canonical(shifted)


def _hf_to_canonical(state: dict[str, Tensor]) -> dict[str, Tensor]:
    for pattern, target in _HF_V4:
        state = {re.sub(pattern, target, k): v for k, v in state.items()}
    state = {k: v for k, v in _drop_buffers(state).items() if not k.startswith("backbone.swin.layernorm.")}
    fused = {}
    for key in [k for k in state if ".attention.q_proj." in k]:
        prefix, suffix = key.split(".attention.q_proj.")
        parts = [state.pop(f"{prefix}.attention.{p}_proj.{suffix}") for p in "qkv"]
        fused[f"{prefix}.attn.qkv.{suffix}"] = torch.cat(parts, dim=0)  # Swin's fused projection: rows q, k, v
    state.update(fused)
    state = _rename(state, _HF)
    return {re.sub(r"(_head\.(?:.*\.)?)batch_norm\.", r"\1bn.", k): v for k, v in state.items()}


def encoder_from_classification(state_dict: dict[str, Any]) -> dict[str, Tensor]:
    """An ImageNet checkpoint in Microsoft's or timm's layout (either timm generation) -> ``encoder.*`` keys."""
    state = unwrap_state_dict(dict(state_dict))
    canonical = _timm_to_canonical(state)
    return {k: v for k, v in _to_segbench(canonical, None).items() if k.startswith("encoder.")}


@register_converter("hf", "upernet")
def from_hf(
    state_dict: dict[str, Any], *, num_classes: int | None = None, **model_options: Any
) -> dict[str, Tensor]:
    """``UperNetForSemanticSegmentation`` with a Swin backbone (transformers 4.x Hub files or 5.x) -> model."""
    return _to_segbench(_hf_to_canonical(unwrap_state_dict(state_dict)), num_classes)


@register_converter("microsoft", "upernet")
def from_microsoft(
    state_dict: dict[str, Any], *, num_classes: int | None = None, **model_options: Any
) -> dict[str, Tensor]:
    """Microsoft's ImageNet Swin (-> encoder) or its Swin-UPerNet segmentation release (-> model)."""
    return _to_segbench(_microsoft_to_canonical(unwrap_state_dict(state_dict)), num_classes)


@register_converter("mmseg", "upernet")
def from_mmseg(
    state_dict: dict[str, Any], *, num_classes: int | None = None, **model_options: Any
) -> dict[str, Tensor]:
    """MMSegmentation's Swin-UPerNet (``backbone.stages``, ``attn.w_msa``, unfold-ordered merging) -> model, or
    its converted ImageNet Swin (the same backbone keys without ``backbone.``, plus ``norm``) -> encoder."""
    state = unwrap_state_dict(state_dict)
    if not any(k.startswith(("backbone.", "decode_head.")) for k in state):
        state = {f"backbone.{k}": v for k, v in state.items() if not k.startswith(("head.", "norm."))}
    canonical = _merge_layout(_rename(state, _MMSEG), to_unfold=False)
    return _to_segbench(_with_output_norms(canonical), num_classes)


@register_converter("timm", "upernet")
def from_timm(
    state_dict: dict[str, Any], *, num_classes: int | None = None, **model_options: Any
) -> dict[str, Tensor]:
    """timm's ImageNet Swin (merging at the start of stages 1..3 since 0.9; older files too) -> encoder."""
    return _to_segbench(_timm_to_canonical(unwrap_state_dict(state_dict)), num_classes)


def to_format(state_dict: dict[str, Tensor], target: str) -> dict[str, Tensor]:
    """Export a segbench Swin-UPerNet state dict: ``"microsoft"`` (its segmentation release, whole model),
    ``"mmseg"`` (whole model, unfold-ordered merging) or ``"timm"`` (recent layout, encoder only, without
    the classifier ``head.fc`` and final ``norm`` that segbench has no counterpart for)."""
    canonical = _rename(dict(state_dict), _SEGBENCH)
    if target == "microsoft":
        return canonical
    if target == "mmseg":
        return _rename(_merge_layout(canonical, to_unfold=True), _MMSEG, reverse=True)
    if target == "timm":
        backbone = {k.removeprefix("backbone."): v for k, v in canonical.items() if k.startswith("backbone.")}
        backbone = {k: v for k, v in backbone.items() if not re.fullmatch(r"norm\d+\.(weight|bias)", k)}
        return {
            re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) + 1}.downsample.", k): v
            for k, v in backbone.items()
        }
    raise ValueError(f"unknown export format {target!r}; valid: microsoft, mmseg, timm")
