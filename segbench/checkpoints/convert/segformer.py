"""SegFormer checkpoints from Hugging Face, NVlabs and MMSegmentation, mapped onto segbench's keys.

segbench's own layout (``segbench.models.encoders.mit``, ``segbench.models.architectures.segformer``): the encoder keeps
NVlabs' names under ``encoder.``; the head is ``decode_head.projections.{i}`` (1x1 conv, stage i = 0..3,
shallow to deep), ``decode_head.fuse.0`` (1x1 conv, input channels ordered deepest stage first) /
``fuse.1`` (BN), ``decode_head.classifier``.

The foreign layouts, as written in the sources (stage index s is 0-based, n = s + 1, block index b):

``hf`` (transformers ``SegformerForSemanticSegmentation``; keys may lack the ``segformer.`` prefix, as in
``SegformerModel`` files). The Hub's files (transformers 4.x names) and transformers >= 5 modules differ;
per row: 4.x name | 5.x name -> segbench name (``...`` = the block prefix of that column):

- ``encoder.patch_embeddings.{s}.proj`` / ``.layer_norm`` | ``stages.{s}.patch_embeddings.proj`` /
  ``.layer_norm`` -> ``encoder.patch_embed{n}.proj`` / ``.norm``
- block prefix ``encoder.block.{s}.{b}`` | ``stages.{s}.blocks.{b}`` -> ``encoder.block{n}.{b}``
- ``...layer_norm_1`` / ``layer_norm_2`` | ``...layernorm_before`` / ``layernorm_after`` -> ``...norm1`` / ``norm2``
- ``...attention.self.query`` | ``...attention.q_proj`` -> ``...attn.q``
- ``...attention.self.key`` and ``.value`` | ``...attention.k_proj`` and ``v_proj`` -> ``...attn.kv``
  (concatenated: key rows first)
- ``...attention.self.sr`` / ``.layer_norm`` | ``...attention.sequence_reduction.sequence_reduction`` /
  ``.layer_norm`` -> ``...attn.sr`` / ``attn.norm``
- ``...attention.output.dense`` | ``...attention.o_proj`` -> ``...attn.proj``
- ``...mlp.dense1`` / ``dwconv.dwconv`` / ``dense2`` | ``...mlp.fc1`` / ``dwconv.dwconv`` / ``fc2`` -> the 5.x names
- ``encoder.layer_norm.{s}`` | ``stages.{s}.layer_norm`` -> ``encoder.norm{n}``
- ``decode_head.linear_c.{s}.proj`` | ``decode_head.linear_projections.{s}.proj`` (Linear) ->
  ``decode_head.projections.{s}`` (1x1 conv)
- ``decode_head.linear_fuse`` / ``batch_norm`` / ``classifier`` (both) -> ``decode_head.fuse.0`` / ``fuse.1`` /
  ``classifier`` (same concat order: c4, c3, c2, c1)
- ``classifier`` (ImageNet ``SegformerForImageClassification``) -> skipped

``nvlabs`` (github.com/NVlabs/SegFormer, ``mix_transformer.py`` and ``segformer_head.py``): the backbone
keys are segbench's with ``backbone.`` for ``encoder.`` (``patch_embed{n}.proj/norm``,
``block{n}.{b}.norm1/attn.q/attn.kv/attn.sr/attn.norm/attn.proj/norm2/mlp.fc1/mlp.dwconv.dwconv/mlp.fc2``,
``norm{n}``); the ImageNet files ``mit_b*.pth`` carry the same keys with no prefix plus a ``head.*``
classifier (skipped). Head: ``decode_head.linear_c{n}.proj`` (Linear) -> ``projections.{s}``,
``linear_fuse.conv`` / ``linear_fuse.bn`` -> ``fuse.0`` / ``fuse.1`` (same concat order c4, c3, c2, c1),
``linear_pred`` -> ``classifier``; ``decode_head.conv_seg`` is mmseg's unused default classifier (skipped).

``mmseg`` (MMSegmentation 1.x ``mit.py`` / ``segformer_head.py``; ``backbone.`` prefix optional):
``layers.{s}.0.projection`` / ``layers.{s}.0.norm`` -> ``patch_embed{n}.proj`` / ``.norm``;
``layers.{s}.1.{b}.norm1`` / ``norm2`` -> the same; ``attn.attn.in_proj_weight`` / ``in_proj_bias`` (fused
q, k, v rows, ``nn.MultiheadAttention``) -> split into ``attn.q`` (first third) and ``attn.kv`` (the rest);
``attn.attn.out_proj`` -> ``attn.proj``; ``attn.sr`` / ``attn.norm`` -> the same; ``ffn.layers.0`` /
``.1`` / ``.4`` (1x1 conv, 3x3 depthwise conv, 1x1 conv) -> ``mlp.fc1`` / ``mlp.dwconv.dwconv`` / ``mlp.fc2``
(1x1 kernels squeezed to Linear weights); ``layers.{s}.2`` -> ``norm{n}``. Head: ``decode_head.convs.{s}.conv``
/ ``.bn`` (conv + BN + ReLU: build the model with ``projection_bn=True``) -> ``projections.{s}.0`` / ``.1``;
``fusion_conv.conv`` / ``.bn`` -> ``fuse.0`` / ``fuse.1`` with the input-channel blocks reversed (mmseg
concatenates c1..c4); ``conv_seg`` -> ``classifier``.

Every converter keeps keys it does not know (so ``convert_with_report`` lists them as unexpected), and
drops the classifier when ``num_classes`` differs from the checkpoint's (fine-tuning on new classes).
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch import Tensor

from segbench.checkpoints.convert import register_converter

__all__ = ["from_hf", "from_nvlabs", "from_mmseg", "to_nvlabs", "to_mmseg"]

StateDict = dict[str, Tensor]
# (regex matched against the whole key, str.format template filled with its named groups, where a 0-based
# stage ``s`` also provides the 1-based ``n`` and vice versa); template None: drop the key.
Rule = tuple[str, str | None]

_HF_RULES: list[Rule] = [
    (r"classifier\.(?P<p>\w+)", None),  # ImageNet head of SegformerForImageClassification
    (r"encoder\.patch_embeddings\.(?P<s>\d+)\.proj\.(?P<p>\w+)", "encoder.patch_embed{n}.proj.{p}"),
    (r"encoder\.patch_embeddings\.(?P<s>\d+)\.layer_norm\.(?P<p>\w+)", "encoder.patch_embed{n}.norm.{p}"),
    (r"encoder\.block\.(?P<s>\d+)\.(?P<b>\d+)\.(?P<rest>.+)", "encoder.block{n}.{b}.{rest}"),
    (r"encoder\.layer_norm\.(?P<s>\d+)\.(?P<p>\w+)", "encoder.norm{n}.{p}"),
    (r"stages\.(?P<s>\d+)\.patch_embeddings\.proj\.(?P<p>\w+)", "encoder.patch_embed{n}.proj.{p}"),
    (r"stages\.(?P<s>\d+)\.patch_embeddings\.layer_norm\.(?P<p>\w+)", "encoder.patch_embed{n}.norm.{p}"),
    (r"stages\.(?P<s>\d+)\.blocks\.(?P<b>\d+)\.(?P<rest>.+)", "encoder.block{n}.{b}.{rest}"),
    (r"stages\.(?P<s>\d+)\.layer_norm\.(?P<p>\w+)", "encoder.norm{n}.{p}"),
    (r"decode_head\.linear_(?:c|projections)\.(?P<s>\d+)\.proj\.(?P<p>\w+)", "decode_head.projections.{s}.{p}"),
    (r"decode_head\.linear_fuse\.(?P<p>\w+)", "decode_head.fuse.0.{p}"),
    (r"decode_head\.batch_norm\.(?P<p>\w+)", "decode_head.fuse.1.{p}"),
    (r"decode_head\.classifier\.(?P<p>\w+)", "decode_head.classifier.{p}"),
]
# Inside a block: 4.x / Hub names and 5.x names -> segbench. ``attn.k``/``attn.v`` are fused afterwards.
_HF_BLOCK_NAMES = {
    "layer_norm_1": "norm1",
    "layernorm_before": "norm1",
    "attention.self.query": "attn.q",
    "attention.q_proj": "attn.q",
    "attention.self.key": "attn.k",
    "attention.k_proj": "attn.k",
    "attention.self.value": "attn.v",
    "attention.v_proj": "attn.v",
    "attention.self.sr": "attn.sr",
    "attention.sequence_reduction.sequence_reduction": "attn.sr",
    "attention.self.layer_norm": "attn.norm",
    "attention.sequence_reduction.layer_norm": "attn.norm",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layer_norm_2": "norm2",
    "layernorm_after": "norm2",
    "mlp.dense1": "mlp.fc1",
    "mlp.dense2": "mlp.fc2",
}

_NVLABS_RULES: list[Rule] = [
    (r"head\.(?P<p>\w+)", None),  # ImageNet classifier of mit_b*.pth
    (r"decode_head\.conv_seg\.(?P<p>\w+)", None),  # mmseg 0.x's default classifier, unused by SegFormerHead
    (r"backbone\.(?P<rest>.+)", "encoder.{rest}"),
    (r"(?P<rest>(?:patch_embed|block|norm)\d.*)", "encoder.{rest}"),
    (r"decode_head\.linear_c(?P<n>\d)\.proj\.(?P<p>\w+)", "decode_head.projections.{s}.{p}"),
    (r"decode_head\.linear_fuse\.conv\.(?P<p>\w+)", "decode_head.fuse.0.{p}"),
    (r"decode_head\.linear_fuse\.bn\.(?P<p>\w+)", "decode_head.fuse.1.{p}"),
    (r"decode_head\.linear_pred\.(?P<p>\w+)", "decode_head.classifier.{p}"),
]

_MM_STAGE = r"(?:backbone\.)?layers\.(?P<s>\d+)"
_MM_BLOCK = _MM_STAGE + r"\.1\.(?P<b>\d+)"
_MMSEG_RULES: list[Rule] = [
    (_MM_STAGE + r"\.0\.projection\.(?P<p>\w+)", "encoder.patch_embed{n}.proj.{p}"),
    (_MM_STAGE + r"\.0\.norm\.(?P<p>\w+)", "encoder.patch_embed{n}.norm.{p}"),
    (_MM_BLOCK + r"\.attn\.attn\.in_proj_(?P<p>weight|bias)", "encoder.block{n}.{b}.attn.qkv.{p}"),  # split below
    (_MM_BLOCK + r"\.attn\.attn\.out_proj\.(?P<p>\w+)", "encoder.block{n}.{b}.attn.proj.{p}"),
    (_MM_BLOCK + r"\.ffn\.layers\.0\.(?P<p>\w+)", "encoder.block{n}.{b}.mlp.fc1.{p}"),
    (_MM_BLOCK + r"\.ffn\.layers\.1\.(?P<p>\w+)", "encoder.block{n}.{b}.mlp.dwconv.dwconv.{p}"),
    (_MM_BLOCK + r"\.ffn\.layers\.4\.(?P<p>\w+)", "encoder.block{n}.{b}.mlp.fc2.{p}"),
    (_MM_BLOCK + r"\.(?P<rest>norm1|norm2|attn\.sr|attn\.norm)\.(?P<p>\w+)", "encoder.block{n}.{b}.{rest}.{p}"),
    (_MM_STAGE + r"\.2\.(?P<p>\w+)", "encoder.norm{n}.{p}"),
    (r"decode_head\.convs\.(?P<s>\d+)\.conv\.(?P<p>\w+)", "decode_head.projections.{s}.0.{p}"),
    (r"decode_head\.convs\.(?P<s>\d+)\.bn\.(?P<p>\w+)", "decode_head.projections.{s}.1.{p}"),
    (r"decode_head\.fusion_conv\.conv\.(?P<p>\w+)", "decode_head.fuse.0.{p}"),
    (r"decode_head\.fusion_conv\.bn\.(?P<p>\w+)", "decode_head.fuse.1.{p}"),
    (r"decode_head\.conv_seg\.(?P<p>\w+)", "decode_head.classifier.{p}"),
]


def _rename(state: StateDict, rules: list[Rule], rename_rest: Callable[[str], str] = lambda key: key) -> StateDict:
    """Apply the first matching rule to every key; keys no rule matches are kept as they are."""
    out: StateDict = {}
    for key, tensor in state.items():
        for pattern, template in rules:
            match = re.fullmatch(pattern, key)
            if match is None:
                continue
            if template is None:
                break
            groups = {k: v for k, v in match.groupdict().items() if v is not None}
            if "s" in groups:
                groups["n"] = int(groups["s"]) + 1
            elif "n" in groups:
                groups["s"] = int(groups["n"]) - 1
            out[rename_rest(template.format(**groups))] = tensor
            break
        else:
            out[key] = tensor
    return out


def _hf_block_name(key: str) -> str:
    match = re.fullmatch(r"(encoder\.block\d+\.\d+)\.(.+)\.(weight|bias)", key)
    if match and match[2] in _HF_BLOCK_NAMES:
        return f"{match[1]}.{_HF_BLOCK_NAMES[match[2]]}.{match[3]}"
    return key


def _fuse_kv(state: StateDict) -> StateDict:
    """Separate key and value projections -> one ``attn.kv`` (key rows first, as NVlabs' code splits it)."""
    for k_key in [k for k in state if ".attn.k." in k]:
        v_key = k_key.replace(".attn.k.", ".attn.v.")
        if v_key in state:
            state[k_key.replace(".attn.k.", ".attn.kv.")] = torch.cat([state.pop(k_key), state.pop(v_key)])
    return state


def _linear_to_conv(state: StateDict) -> StateDict:
    """The decoder's per-stage Linear weights (out, in) -> 1x1 conv weights (out, in, 1, 1)."""
    for key in [k for k in state if re.fullmatch(r"decode_head\.projections\.\d+\.weight", k)]:
        if state[key].ndim == 2:
            state[key] = state[key][:, :, None, None]
    return state


def _check_head(state: StateDict, model_options: dict[str, Any], source: str) -> None:
    has_bn = any(re.match(r"decode_head\.projections\.\d+\.1\.", k) for k in state)
    has_head = any(k.startswith("decode_head.projections.") for k in state)
    wants_bn = bool(model_options.get("projection_bn", False))
    if has_head and has_bn != wants_bn:
        if has_bn:
            raise ValueError(
                f"this {source} checkpoint's decoder projections are conv + BN + ReLU (MMSegmentation's "
                "SegformerHead); build the model with projection_bn=True"
            )
        raise ValueError(
            f"this {source} checkpoint has the paper's linear projections; build the model with projection_bn=False"
        )


def _drop_foreign_classifier(state: StateDict, num_classes: int | None) -> StateDict:
    weight = state.get("decode_head.classifier.weight")
    if num_classes is not None and weight is not None and weight.shape[0] != num_classes:
        # A checkpoint for other classes: keep everything but the classifier, which is trained afresh.
        state.pop("decode_head.classifier.weight")
        state.pop("decode_head.classifier.bias", None)
    return state


@register_converter("hf", "segformer")
def from_hf(state_dict: StateDict, *, num_classes: int | None = None, **model_options: Any) -> StateDict:
    """Hugging Face ``SegformerForSemanticSegmentation`` -> whole model; ``SegformerModel`` or
    ``SegformerForImageClassification`` -> encoder only. Both the Hub files' (transformers 4.x) and
    transformers 5.x key names are accepted. HF's LayerNorms use eps 1e-5 throughout; build with
    ``norm_eps=1e-5`` to compute exactly HF's function (the default 1e-6 is the original code's)."""
    stripped = {k.removeprefix("segformer."): v for k, v in state_dict.items()}
    state = _linear_to_conv(_fuse_kv(_rename(stripped, _HF_RULES, _hf_block_name)))
    _check_head(state, model_options, "Hugging Face")
    return _drop_foreign_classifier(state, num_classes)


@register_converter("nvlabs", "segformer")
def from_nvlabs(state_dict: StateDict, *, num_classes: int | None = None, **model_options: Any) -> StateDict:
    """NVlabs' SegFormer checkpoints (``backbone.*`` + ``decode_head.*``) -> whole model; their ImageNet
    ``mit_b*.pth`` files -> encoder only."""
    state = _linear_to_conv(_rename(state_dict, _NVLABS_RULES))
    _check_head(state, model_options, "NVlabs")
    return _drop_foreign_classifier(state, num_classes)


@register_converter("mmseg", "segformer")
def from_mmseg(state_dict: StateDict, *, num_classes: int | None = None, **model_options: Any) -> StateDict:
    """MMSegmentation 1.x SegFormer (``MixVisionTransformer`` + ``SegformerHead``) -> whole model, built with
    ``projection_bn=True``; a backbone-only file (``layers.*``, e.g. from mit2mmseg) -> encoder only.

    mmseg's LayerNorms all use eps 1e-6 (the patch-embedding and key/value norms too, where the
    original code and segbench use 1e-5): a negligible difference on trained weights."""
    state = _rename(state_dict, _MMSEG_RULES)
    for key in [k for k in state if ".attn.qkv." in k]:
        qkv = state.pop(key)
        dim = qkv.shape[0] // 3
        state[key.replace(".qkv.", ".q.")] = qkv[:dim]
        state[key.replace(".qkv.", ".kv.")] = qkv[dim:]
    for key in [k for k in state if re.search(r"\.mlp\.fc[12]\.weight$", k)]:
        state[key] = state[key].flatten(1)  # 1x1 conv -> Linear
    fuse = state.get("decode_head.fuse.0.weight")
    if fuse is not None:
        num_stages = sum(1 for k in state if re.fullmatch(r"decode_head\.projections\.\d+\.0\.weight", k))
        state["decode_head.fuse.0.weight"] = torch.cat(fuse.chunk(num_stages, dim=1)[::-1], dim=1)
    _check_head(state, model_options, "MMSegmentation")
    return _drop_foreign_classifier(state, num_classes)


def to_nvlabs(state_dict: StateDict) -> StateDict:
    """segbench SegFormer (paper head) -> NVlabs' key layout: the inverse of ``from_nvlabs``."""
    out: StateDict = {}
    for key, tensor in state_dict.items():
        if key.startswith("encoder."):
            out["backbone." + key.removeprefix("encoder.")] = tensor
        elif match := re.fullmatch(r"decode_head\.projections\.(\d+)\.(weight|bias)", key):
            linear = tensor.flatten(1) if tensor.ndim == 4 else tensor  # 1x1 conv -> Linear
            out[f"decode_head.linear_c{int(match[1]) + 1}.proj.{match[2]}"] = linear
        elif match := re.fullmatch(r"decode_head\.fuse\.([01])\.(\w+)", key):
            out[f"decode_head.linear_fuse.{'conv' if match[1] == '0' else 'bn'}.{match[2]}"] = tensor
        elif match := re.fullmatch(r"decode_head\.classifier\.(\w+)", key):
            out[f"decode_head.linear_pred.{match[1]}"] = tensor
        else:
            raise KeyError(f"{key!r} has no place in NVlabs' SegFormer (is this a projection_bn=True model?)")
    return out


def to_mmseg(state_dict: StateDict) -> StateDict:
    """segbench SegFormer built with ``projection_bn=True`` -> MMSegmentation 1.x keys: the inverse of
    ``from_mmseg``."""
    num_stages = sum(1 for k in state_dict if re.fullmatch(r"decode_head\.projections\.\d+\.0\.weight", k))
    kv_keys = {k.replace(".attn.q.", ".attn.kv.") for k in state_dict if ".attn.q." in k}
    out: StateDict = {}
    for key, tensor in state_dict.items():
        if key in kv_keys:
            continue  # written with its q
        if match := re.fullmatch(r"encoder\.patch_embed(\d)\.(proj|norm)\.(\w+)", key):
            part = "projection" if match[2] == "proj" else "norm"
            out[f"backbone.layers.{int(match[1]) - 1}.0.{part}.{match[3]}"] = tensor
        elif match := re.fullmatch(r"encoder\.norm(\d)\.(\w+)", key):
            out[f"backbone.layers.{int(match[1]) - 1}.2.{match[2]}"] = tensor
        elif match := re.fullmatch(r"encoder\.block(\d)\.(\d+)\.(.+)\.(weight|bias|\w+)", key):
            prefix = f"backbone.layers.{int(match[1]) - 1}.1.{match[2]}"
            name, param = match[3], match[4]
            if name == "attn.q":
                kv = state_dict[key.replace(".attn.q.", ".attn.kv.")]
                out[f"{prefix}.attn.attn.in_proj_{param}"] = torch.cat([tensor, kv])
            elif name == "attn.proj":
                out[f"{prefix}.attn.attn.out_proj.{param}"] = tensor
            elif name in ("mlp.fc1", "mlp.fc2"):
                index = 0 if name == "mlp.fc1" else 4
                out[f"{prefix}.ffn.layers.{index}.{param}"] = tensor[:, :, None, None] if tensor.ndim == 2 else tensor
            elif name == "mlp.dwconv.dwconv":
                out[f"{prefix}.ffn.layers.1.{param}"] = tensor
            else:  # norm1, norm2, attn.sr, attn.norm
                out[f"{prefix}.{name}.{param}"] = tensor
        elif match := re.fullmatch(r"decode_head\.projections\.(\d+)\.([01])\.(\w+)", key):
            out[f"decode_head.convs.{match[1]}.{'conv' if match[2] == '0' else 'bn'}.{match[3]}"] = tensor
        elif match := re.fullmatch(r"decode_head\.fuse\.([01])\.(\w+)", key):
            if key == "decode_head.fuse.0.weight":
                tensor = torch.cat(tensor.chunk(num_stages, dim=1)[::-1], dim=1)
            out[f"decode_head.fusion_conv.{'conv' if match[1] == '0' else 'bn'}.{match[2]}"] = tensor
        elif match := re.fullmatch(r"decode_head\.classifier\.(\w+)", key):
            out[f"decode_head.conv_seg.{match[1]}"] = tensor
        else:
            raise KeyError(
                f"{key!r} has no place in MMSegmentation's SegFormer (was the model built with projection_bn=True?)"
            )
    return out
