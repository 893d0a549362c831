"""Swin Transformer T/S/B (Liu, Lin, Cao, Hu, Wei, Zhang, Lin, Guo. Swin Transformer: Hierarchical Vision
Transformer using Shifted Windows. ICCV 2021), as the backbone of its segmentation setup (UPerNet, Sec. 4.3).

- Patch embedding (Sec. 3.1): a 4x4/4 conv to ``embed_dim`` channels, then LayerNorm.
- Swin blocks (Sec. 3.1-3.2, Eq. 3): pre-norm window attention and a 4x MLP (GELU), each with a residual
  and stochastic depth. Attention runs inside non-overlapping ``window_size`` x ``window_size`` windows;
  every second block shifts the windows by ``window_size // 2`` (a cyclic roll of the map), and a mask
  keeps tokens that the roll brought together from different image regions from attending to each
  other (Sec. 3.2, "efficient batch computation", mask value -100 as the released code).
- Relative position bias (Sec. 3.2, Eq. 4): a learned ``(2M-1)^2 x heads`` table per block, indexed by
  the offset between the two tokens of a window.
- Patch merging between stages (Sec. 3.1): concatenate each 2x2 neighbourhood in the order
  ``[(0,0), (1,0), (0,1), (1,1)]`` (row, column), LayerNorm over 4C, Linear 4C -> 2C without bias.
- A LayerNorm on each stage output (``norm0`` .. ``norm3``), as the segmentation backbone adds.

Any input size works, as in the released segmentation code: the image is zero-padded bottom/right to a
multiple of the patch size, each block pads its (normalised) map to a multiple of the window and crops
the result, and patch merging pads odd sizes. Windows are never shrunk for small maps (the classification
code's trick), so results match the segmentation checkpoints of Microsoft, MMSegmentation and Hugging
Face's ``SwinBackbone``.

Parameter names follow Microsoft's release (``patch_embed.proj``, ``layers.{i}.blocks.{j}.attn.qkv``,
``layers.{i}.downsample``, ...), so its ImageNet checkpoints load through ``load_backbone_weights``;
``segbench.checkpoints.convert.swin`` converts the other toolkits' layouts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.encoders.layers import DropPath
from segbench.models.blocks import Encoder
from segbench.models.registry import register_encoder

__all__ = ["SWIN_VARIANTS", "SwinTransformer", "swin", "shifted_window_mask"]

# variant -> (embed_dim, depths, num_heads); paper Sec. 3.3.
SWIN_VARIANTS: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    "t": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "s": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "b": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
}
MASKED = -100.0  # the released code's value for "may not attend" (exp(-100) is zero in float32)


def _spatial(x: Tensor, dims: tuple[int, int] = (1, 2)) -> tuple[int, int]:
    """H, W as plain ints: padding, windows and masks are fixed per input size, and plain ints keep them
    constant when the model is traced at one size (ONNX export) instead of recording size arithmetic."""
    return int(x.shape[dims[0]]), int(x.shape[dims[1]])


def _to_windows(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) with H, W multiples of ``window`` -> (B * windows, window * window, C), row-major windows."""
    (h, w), c = _spatial(x), x.shape[-1]
    x = x.view(-1, h // window, window, w // window, window, c).transpose(2, 3)
    return x.reshape(-1, window * window, c)


def _from_windows(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    c = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, c).transpose(2, 3)
    return x.reshape(-1, height, width, c)


def shifted_window_mask(height: int, width: int, window: int, shift: int, device=None) -> Tensor:
    """Attention mask of the shifted windows (Sec. 3.2, Fig. 4) for a padded map of ``height`` x ``width``:
    (windows, window^2, window^2) with 0 where two tokens come from the same region of the un-rolled map
    and ``MASKED`` where the cyclic roll brought them together. Each axis has three regions: the part
    that stays in place, the last full window, and the ``shift`` positions that wrap around."""

    def regions(length: int) -> Tensor:
        index = torch.arange(length, device=device)
        return (index >= length - window).long() + (index >= length - shift).long()

    region = regions(height)[:, None] * 3 + regions(width)[None, :]
    region = _to_windows(region[None, :, :, None].float(), window).squeeze(-1)  # (windows, window^2)
    different = region[:, :, None] != region[:, None, :]
    return torch.zeros(different.shape, device=device).masked_fill(different, MASKED)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with the relative position bias of Eq. 4."""

    def __init__(self, dim: int, num_heads: int, window_size: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"channels ({dim}) must be divisible by the number of heads ({num_heads})")
        self.num_heads = num_heads
        self.window_size = window_size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # index[a, b] = table row of the offset (row_a - row_b, col_a - col_b), shifted to be >= 0.
        coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
        coords = coords.flatten(1)
        offsets = (coords[:, :, None] - coords[:, None, :]) + (window_size - 1)
        index = offsets[0] * (2 * window_size - 1) + offsets[1]
        self.register_buffer("relative_position_index", index, persistent=False)

    def relative_position_bias(self) -> Tensor:
        n = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1)  # (heads, n, n)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B * windows, n, C); mask: (windows, n, n) or None."""
        n, c = x.shape[1:]
        head_dim = c // self.num_heads
        q, k, v = self.qkv(x).view(-1, n, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias().to(q.dtype)  # (heads, n, n)
        if mask is not None:
            # (windows, heads, n, n), broadcast over the batch below (window index is fastest in B * windows)
            bias = bias + mask.unsqueeze(1).to(q.dtype)
        if not (bias.requires_grad and q.device.type == "cpu"):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=_per_window(bias, q.shape[0]))
        else:
            # On the CPU a mask that needs a gradient sends scaled_dot_product_attention to its generic path
            # (a copy of the bias per window, a guarded softmax), about a quarter slower in training than
            # writing softmax(q k^T / sqrt(d) + bias) v out, as the released code does.
            scores = (q * head_dim**-0.5) @ k.transpose(-2, -1)  # (B * windows, heads, n, n)
            if mask is None:
                scores = scores + bias
            else:
                scores = (scores.view(-1, *bias.shape) + bias).view(-1, self.num_heads, n, n)
            out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(-1, n, c))


def _per_window(bias: Tensor, batch_windows: int) -> Tensor:
    """(heads, n, n) -> (1, heads, n, n); (windows, heads, n, n) -> repeated to (batch * windows, heads, n, n)."""
    if bias.ndim == 3:
        return bias.unsqueeze(0)
    return bias.repeat(batch_windows // bias.shape[0], 1, 1, 1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """x + DropPath((S)W-MSA(LN(x))), then x + DropPath(MLP(LN(x))) (Eq. 3), on a (B, H, W, C) map."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        (h, w), window = _spatial(x), self.window_size
        y = F.pad(self.norm1(x), (0, 0, 0, -w % window, 0, -h % window))
        hp, wp = _spatial(y)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(_to_windows(y, window), mask if self.shift else None)
        y = _from_windows(y, window, hp, wp)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(y[:, :h, :w])
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhoods -> one token: concat [(0,0), (1,0), (0,1), (1,1)], LayerNorm(4C), Linear(4C, 2C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h, w = _spatial(x)
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, embed_dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        h, w = _spatial(x, (2, 3))
        x = F.pad(x, (0, -w % self.patch_size, 0, -h % self.patch_size))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # (B, H/4, W/4, C)


class SwinStage(nn.Module):
    """``depth`` blocks alternating regular and shifted windows, then (except the last stage) patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_paths: Sequence[float],
        downsample: bool,
    ):
        super().__init__()
        shift = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if j % 2 == 0 else shift, mlp_ratio, drop_paths[j])
            for j in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (input of the next stage, this stage's output before merging)."""
        mask = None
        if len(self.blocks) > 1:
            window, shift = self.blocks[1].window_size, self.blocks[1].shift
            h, w = _spatial(x)
            mask = shifted_window_mask(h + (-h % window), w + (-w % window), window, shift, x.device)
        for block in self.blocks:
            x = block(x, mask)
        return (x if self.downsample is None else self.downsample(x)), x


class SwinTransformer(Encoder):
    """The hierarchical Swin backbone; ``forward`` returns the four normalised stage outputs (NCHW) at
    strides 4, 8, 16, 32 with ``embed_dim * (1, 2, 4, 8)`` channels."""

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        drop_path_rate: float = 0.3,
        in_channels: int = 3,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        depths, num_heads = tuple(int(d) for d in depths), tuple(int(n) for n in num_heads)
        if len(depths) != len(num_heads) or not depths or min(depths) < 1:
            raise ValueError(f"depths and num_heads need one positive entry per stage, got {depths} and {num_heads}")
        if window_size < 2:
            raise ValueError(f"window_size must be >= 2, got {window_size}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.patch_embed = PatchEmbed(in_channels, embed_dim, patch_size)
        # Stochastic depth grows linearly from 0 to drop_path_rate over all blocks (Sec. 4.1 / A2.1).
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        dims = [embed_dim * 2**i for i in range(len(depths))]
        self.layers = nn.ModuleList()
        for i, (dim, depth, heads) in enumerate(zip(dims, depths, num_heads)):
            block_rates = rates[sum(depths[:i]) : sum(depths[: i + 1])]
            self.layers.append(SwinStage(dim, depth, heads, window_size, mlp_ratio, block_rates, i < len(depths) - 1))
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        self.out_channels = tuple(dims)
        self.strides = tuple(patch_size * 2**i for i in range(len(depths)))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # The released code's initialisation: truncated normal (std 0.02) for linear layers and the bias tables.
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, WindowAttention):
            nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.patch_embed(x)
        outputs = []
        for i, stage in enumerate(self.layers):
            x, out = stage(x)
            outputs.append(getattr(self, f"norm{i}")(out).permute(0, 3, 1, 2).contiguous())
        return outputs

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Adapt the patch embedding of a backbone state dict in this encoder's keys to ``in_channels``
        other than 3 (1: sum over RGB; n: RGB repeated cyclically, scaled by 3/n).

        Files in Microsoft's or timm's classification layout are first mapped to these keys by
        ``segbench.checkpoints`` (``convert.swin.encoder_from_classification``: classifier, final norm and
        saved buffers dropped, timm's merging layers moved back, output norms started at identity).
        """
        state = dict(state_dict)
        weight = state.get("patch_embed.proj.weight")
        wanted = self.patch_embed.proj.in_channels
        if weight is not None and weight.shape[1] == 3 and wanted != 3:
            if wanted == 1:
                state["patch_embed.proj.weight"] = weight.sum(dim=1, keepdim=True)
            else:
                repeats = -(-wanted // 3)
                state["patch_embed.proj.weight"] = weight.repeat(1, repeats, 1, 1)[:, :wanted] * (3.0 / wanted)
        return state


def swin(
    *,
    variant: str,
    in_channels: int = 3,
    embed_dim: int | None = None,
    depths: Sequence[int] | None = None,
    num_heads: Sequence[int] | None = None,
    window_size: int = 7,
    drop_path_rate: float = 0.3,
) -> SwinTransformer:
    """Builder behind ``swin_t/s/b``. ``embed_dim``, ``depths`` and ``num_heads`` override the variant's
    (for slim test and quick-benchmark models); ``drop_path_rate`` 0.3 is the paper's UPerNet setting."""
    default_dim, default_depths, default_heads = SWIN_VARIANTS[variant]
    return SwinTransformer(
        embed_dim=embed_dim or default_dim,
        depths=depths or default_depths,
        num_heads=num_heads or default_heads,
        window_size=window_size,
        drop_path_rate=drop_path_rate,
        in_channels=in_channels,
    )


for _variant in SWIN_VARIANTS:
    register_encoder(f"swin_{_variant}", kind="swin", variant=_variant)(swin)
