"""Mix Transformer MiT-B0 ... MiT-B5, the encoder of SegFormer (Xie, Wang, Yu, Anandkumar, Alvarez, Luo.
SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers. NeurIPS 2021).

Four stages, each (paper Sec. 3.1):

- overlapped patch merging: a strided conv whose kernel is larger than its stride (7x7/4 pad 3 for
  stage 1, 3x3/2 pad 1 after), then LayerNorm; unlike ViT's disjoint patches, neighbouring patches share
  pixels, which keeps local continuity;
- pre-norm transformer blocks of efficient self-attention, whose keys and values come from a shortened
  sequence (Eq. 2): the paper's reduction R = 64/16/4/1 of the sequence length is, as in the official
  code, a conv with kernel = stride = ``sr_ratio`` = 8/4/2/1 on the token map, then LayerNorm; the cost
  drops from O(N^2) to O(N^2/R);
- Mix-FFN: Linear -> 3x3 depthwise conv -> GELU -> Linear, expansion 4 (Eq. 3). The zero-padded 3x3 conv
  leaks enough position information that no positional embedding is needed, so any input size works;
- a LayerNorm after each stage.

Stochastic depth grows linearly from 0 to ``drop_path_rate`` (0.1) over all blocks. Widths, depths and
heads are those of the paper's Table 6.

Module and parameter names follow NVlabs' release (``patch_embed1.proj``, ``block1.0.attn.q`` / ``kv``
(keys and values fused, keys first) / ``sr`` / ``norm`` / ``proj``, ``block1.0.mlp.fc1`` /
``dwconv.dwconv`` / ``fc2``, ``norm1`` ...), so the official ImageNet files ``mit_b*.pth`` load with
``load_backbone_weights`` (their ``head.*`` classifier is skipped). LayerNorm eps also follows that code:
1e-5 in the patch embeddings and on the reduced keys/values, ``norm_eps`` = 1e-6 in the blocks and after
each stage (Hugging Face's port uses 1e-5 throughout: pass ``norm_eps=1e-5`` to reproduce it exactly).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.encoders.layers import DropPath
from segbench.models.blocks import Encoder
from segbench.models.registry import register_encoder

__all__ = ["MixTransformer", "MiTConfig", "MIT_CONFIGS", "mix_transformer"]

PATCH_SIZES = (7, 3, 3, 3)
PATCH_STRIDES = (4, 2, 2, 2)
MLP_RATIO = 4


@dataclass(frozen=True)
class MiTConfig:
    embed_dims: tuple[int, ...]  # channels of each stage (C_i in Table 6)
    depths: tuple[int, ...]  # blocks per stage (L_i)
    num_heads: tuple[int, ...] = (1, 2, 5, 8)  # attention heads per stage (N_i)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)  # key/value sequence-reduction ratio per stage (R_i)


# Paper Table 6.
MIT_CONFIGS: dict[str, MiTConfig] = {
    "b0": MiTConfig(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "b1": MiTConfig(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2)),
    "b2": MiTConfig(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3)),
    "b3": MiTConfig(embed_dims=(64, 128, 320, 512), depths=(3, 4, 18, 3)),
    "b4": MiTConfig(embed_dims=(64, 128, 320, 512), depths=(3, 8, 27, 3)),
    "b5": MiTConfig(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3)),
}


def _to_map(tokens: Tensor, height: int, width: int) -> Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) map."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


class OverlapPatchEmbed(nn.Module):
    """Overlapped patch merging (Sec. 3.1): strided conv with kernel > stride, then LayerNorm on tokens."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)  # eps 1e-5, as in the official code

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from a sequence shortened sr_ratio^2 times by a
    conv with kernel = stride = sr_ratio and a LayerNorm (Sec. 3.1, Eq. 2; from PVT, Wang et al. ICCV 2021)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # keys in rows [0, dim), values in [dim, 2 dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)  # eps 1e-5, as in the official code

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        batch, length, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(x).reshape(batch, length, self.num_heads, head_dim).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.norm(self.sr(_to_map(x, height, width)).flatten(2).transpose(1, 2))
        k, v = self.kv(x).reshape(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class DepthwiseConv(nn.Module):
    """The 3x3 depthwise conv of Mix-FFN on the token map (wrapped so the key is ``dwconv.dwconv``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        return self.dwconv(_to_map(x, height, width)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """Mix-FFN (Eq. 3): x -> fc2(GELU(DWConv3x3(fc1(x)))); the conv supplies positional information."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DepthwiseConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), height, width)))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MixFFN(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, drop_path: float, norm_eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MixFFN(dim, MLP_RATIO * dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class MixTransformer(Encoder):
    """The hierarchical MiT encoder: four stages at strides 4, 8, 16, 32 (see the module docstring).

    Stage ``i`` (1-based, as in the official code) owns ``patch_embed{i}``, ``block{i}`` and ``norm{i}``.
    """

    def __init__(
        self,
        config: MiTConfig,
        *,
        in_channels: int = 3,
        drop_path_rate: float = 0.1,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        lengths = {len(v) for v in (config.embed_dims, config.depths, config.num_heads, config.sr_ratios)}
        if lengths != {4}:
            raise ValueError(
                f"MiT has 4 stages: embed_dims, depths, num_heads and sr_ratios need 4 entries each, got {config}"
            )
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.config = config
        self.out_channels: tuple[int, ...] = tuple(config.embed_dims)
        self.strides: tuple[int, ...] = (4, 8, 16, 32)
        # Stochastic depth rate rises linearly over all blocks of all stages.
        total = sum(config.depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        previous = in_channels
        for stage, (dim, depth, heads, sr) in enumerate(
            zip(config.embed_dims, config.depths, config.num_heads, config.sr_ratios), start=1
        ):
            first = sum(config.depths[: stage - 1])
            # Numbered attributes, not a ModuleList: the names are the official checkpoints' keys.
            embed = OverlapPatchEmbed(previous, dim, PATCH_SIZES[stage - 1], PATCH_STRIDES[stage - 1])
            setattr(self, f"patch_embed{stage}", embed)
            blocks = nn.ModuleList(Block(dim, heads, sr, rates[first + j], norm_eps) for j in range(depth))
            setattr(self, f"block{stage}", blocks)
            setattr(self, f"norm{stage}", nn.LayerNorm(dim, eps=norm_eps))
            previous = dim
        self.min_input_size = _min_input_size(config.sr_ratios)
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(
                f"MiT with sr_ratios {self.config.sr_ratios} needs inputs of at least {self.min_input_size}x"
                f"{self.min_input_size} pixels (any size from there works), got {tuple(x.shape[-2:])}"
            )
        features = []
        for stage in range(1, len(self.out_channels) + 1):
            x, height, width = getattr(self, f"patch_embed{stage}")(x)
            for block in getattr(self, f"block{stage}"):
                x = block(x, height, width)
            x = _to_map(getattr(self, f"norm{stage}")(x), height, width)
            features.append(x)
        return features


def _min_input_size(sr_ratios: Sequence[int]) -> int:
    """Smallest side for which every stage's token map is at least as large as its reduction conv."""

    def fits(side: int) -> bool:
        for patch, stride, sr in zip(PATCH_SIZES, PATCH_STRIDES, sr_ratios):
            side = (side + 2 * (patch // 2) - patch) // stride + 1
            if side < max(sr, 1):
                return False
        return True

    return next(side for side in range(1, 4096) if fits(side))


def _init_weights(module: nn.Module) -> None:
    # The official initialisation: truncated normal (std 0.02) linears, fan-out normal convs.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        nn.init.zeros_(module.bias)


@register_encoder("mit_b0", kind="mit", size="b0")
@register_encoder("mit_b1", kind="mit", size="b1")
@register_encoder("mit_b2", kind="mit", size="b2")
@register_encoder("mit_b3", kind="mit", size="b3")
@register_encoder("mit_b4", kind="mit", size="b4")
@register_encoder("mit_b5", kind="mit", size="b5")
def mix_transformer(
    *,
    size: str,
    in_channels: int = 3,
    drop_path_rate: float = 0.1,
    embed_dims: Sequence[int] | None = None,
    depths: Sequence[int] | None = None,
    num_heads: Sequence[int] | None = None,
    sr_ratios: Sequence[int] | None = None,
    norm_eps: float = 1e-6,
) -> MixTransformer:
    """MiT-``size`` of Table 6. ``embed_dims``/``depths``/``num_heads``/``sr_ratios`` (4 entries each)
    override the table for slim test or quick-benchmark variants; the rest of the design is unchanged."""
    if size not in MIT_CONFIGS:
        raise ValueError(f"unknown MiT size {size!r}; valid: {', '.join(MIT_CONFIGS)}")
    base = MIT_CONFIGS[size]
    config = MiTConfig(
        embed_dims=tuple(embed_dims or base.embed_dims),
        depths=tuple(depths or base.depths),
        num_heads=tuple(num_heads or base.num_heads),
        sr_ratios=tuple(sr_ratios or base.sr_ratios),
    )
    return MixTransformer(config, in_channels=in_channels, drop_path_rate=drop_path_rate, norm_eps=norm_eps)
