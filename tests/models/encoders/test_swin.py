import re

import pytest
import torch
import torch.nn.functional as F

import segbench
from segbench.checkpoints.load import load_backbone_weights
from segbench.models.encoders.swin import MASKED, SwinBlock, WindowAttention, shifted_window_mask

SLIM = dict(embed_dim=8, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), drop_path_rate=0.0)


def count(module):
    return sum(p.numel() for p in module.parameters())


# ImageNet classifiers (paper Table 1; timm/Microsoft releases): 28.29M, 49.61M, 87.77M. The segmentation
# encoder drops the 1000-way head and the final norm and adds one LayerNorm per stage output.
@pytest.mark.parametrize(
    "name, classifier_params, dim, depths, heads",
    [
        ("swin_t", 28_288_354, 96, (2, 2, 6, 2), (3, 6, 12, 24)),
        ("swin_s", 49_606_258, 96, (2, 2, 18, 2), (3, 6, 12, 24)),
        ("swin_b", 87_768_224, 128, (2, 2, 18, 2), (4, 8, 16, 32)),
    ],
)
def test_variants_match_the_released_classifiers(name, classifier_params, dim, depths, heads):
    with torch.device("meta"):
        enc = segbench.build_encoder(name)
    widths = (dim, 2 * dim, 4 * dim, 8 * dim)
    assert enc.out_channels == widths and enc.strides == (4, 8, 16, 32)
    assert tuple(len(stage.blocks) for stage in enc.layers) == depths
    assert tuple(stage.blocks[0].attn.num_heads for stage in enc.layers) == heads
    imagenet_head, final_norm, output_norms = 8 * dim * 1000 + 1000, 2 * 8 * dim, 2 * sum(widths)
    assert count(enc) == classifier_params - imagenet_head - final_norm + output_norms
    # every second block shifts by half a window; the last stage has no merging layer
    assert [b.shift for b in enc.layers[2].blocks[:4]] == [0, 3, 0, 3]
    assert enc.layers[3].downsample is None and enc.layers[0].downsample.reduction.weight.shape == (2 * dim, 4 * dim)
    # stochastic depth: linear from 0 to 0.3 over all blocks
    rates = [b.drop_path.drop_prob for stage in enc.layers for b in stage.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3) and rates == sorted(rates)


@pytest.mark.parametrize("size, expected", [((64, 64), [16, 8, 4, 2]), ((100, 75), [(25, 19), (13, 10), (7, 5), (4, 3)])])
def test_stage_outputs_any_size(size, expected):
    enc = segbench.build_encoder("swin_t", in_channels=2, **SLIM).eval()
    with torch.no_grad():
        feats = enc(torch.randn(1, 2, *size))
    assert [f.shape[1] for f in feats] == list(enc.out_channels) == [8, 16, 32, 64]
    sizes = [tuple(f.shape[-2:]) for f in feats]
    assert sizes == [e if isinstance(e, tuple) else (e, e) for e in expected]


def test_shifted_window_mask_regions():
    mask = shifted_window_mask(14, 14, window=7, shift=3)
    assert mask.shape == (4, 49, 49)
    assert set(mask.unique().tolist()) == {0.0, MASKED}
    assert (mask == 0).all(dim=(1, 2)).tolist() == [True, False, False, False]  # only the top-left window is whole
    # bottom-right window of the rolled map: 4 regions of 4x4, 4x3, 3x4 and 3x3 tokens
    allowed = (mask[3] == 0).sum(dim=1)
    assert sorted(set(allowed.tolist())) == [9, 12, 16]
    assert torch.equal(mask, mask.transpose(1, 2))


def test_relative_position_index_covers_the_table():
    attn = WindowAttention(dim=4, num_heads=2, window_size=3)
    index = attn.relative_position_index
    assert index.shape == (9, 9)
    assert index.unique().tolist() == list(range(25))
    assert (index.diagonal() == 12).all()  # zero offset is the centre of the 5x5 table
    assert index[0, 8] == 0 and index[8, 0] == 24  # offsets (-2, -2) and (+2, +2)
    assert "relative_position_index" not in attn.state_dict()  # derived, not a weight


def _influence(block, mask, row, col):
    """Which output tokens of ``block`` on a 14x14 map change when input token (row, col) changes."""
    x = torch.randn(1, 14, 14, 8)
    changed = x.clone()
    changed[0, row, col] += torch.randn(8)  # not a constant: LayerNorm would remove it
    with torch.no_grad():
        return (block(x, mask) - block(changed, mask)).abs().sum(-1)[0] > 0


def test_windows_isolate_tokens_unless_shifted():
    torch.manual_seed(0)
    plain = SwinBlock(8, 2, window_size=7, shift=0, mlp_ratio=4.0, drop_path=0.0).eval()
    reach = _influence(plain, None, 5, 5)
    assert reach[:7, :7].all() and not reach[7:].any() and not reach[:, 7:].any()
    # shifted by 3, token (5, 5) shares a window with rows/cols 3..9: it reaches across the old border
    shifted = SwinBlock(8, 2, window_size=7, shift=3, mlp_ratio=4.0, drop_path=0.0).eval()
    mask = shifted_window_mask(14, 14, 7, 3)
    reach = _influence(shifted, mask, 5, 5)
    assert reach[3:10, 3:10].all() and reach.sum() == 49
    # token (0, 0) is rolled to the bottom-right window next to rows/cols 10..13; the mask keeps it to
    # its own 3x3 region, without the mask it would see the far side of the image
    assert _influence(shifted, mask, 0, 0).nonzero().tolist() == [[r, c] for r in range(3) for c in range(3)]
    assert _influence(shifted, None, 0, 0)[10:, 10:].any()


def _classification_checkpoint(enc, timm_layout):
    """An ImageNet checkpoint in the publisher's layout, built from the encoder's own tensors."""
    state = {k: v.clone() for k, v in enc.state_dict().items() if not k.startswith("norm")}
    last = enc.out_channels[-1]
    state.update({"norm.weight": torch.ones(last), "norm.bias": torch.zeros(last)})
    state["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    if timm_layout:  # timm >= 0.9: merging at the start of the next stage
        move = lambda m: f"layers.{int(m[1]) + 1}.downsample"  # noqa: E731
        state = {re.sub(r"^layers\.(\d+)\.downsample", move, k): v for k, v in state.items()}
        state.update({"head.fc.weight": torch.zeros(10, last), "head.fc.bias": torch.zeros(10)})
    else:
        state.update({"head.weight": torch.zeros(10, last), "head.bias": torch.zeros(10)})
    return {"model": state}


@pytest.mark.parametrize("timm_layout", [False, True])
def test_load_imagenet_weights(timm_layout):
    source = segbench.build_encoder("swin_t", **SLIM)
    ckpt = _classification_checkpoint(source, timm_layout)
    target = segbench.build_encoder("swin_t", **SLIM)
    report = load_backbone_weights(target, ckpt)
    assert not report.missing
    for key, value in source.state_dict().items():
        if key.startswith("norm"):  # output norms are new: LayerNorm identity
            identity = torch.ones_like(value) if key.endswith("weight") else torch.zeros_like(value)
            assert torch.equal(target.state_dict()[key], identity)
        else:
            assert torch.equal(target.state_dict()[key], value), key


def test_load_imagenet_weights_one_channel():
    source = segbench.build_encoder("swin_t", **SLIM)
    target = segbench.build_encoder("swin_t", in_channels=1, **SLIM)
    load_backbone_weights(target, _classification_checkpoint(source, False))
    torch.testing.assert_close(target.patch_embed.proj.weight, source.patch_embed.proj.weight.sum(1, keepdim=True))


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="one positive entry per stage"):
        segbench.build_encoder("swin_t", depths=(2, 2, 6), num_heads=(3, 6, 12, 24))
    with pytest.raises(ValueError, match="divisible"):
        segbench.build_encoder("swin_t", embed_dim=10, num_heads=(3, 6, 12, 24))
    with pytest.raises(ValueError, match="drop_path_rate"):
        segbench.build_encoder("swin_t", drop_path_rate=1.0)


@pytest.mark.parametrize("masked", [False, True])
def test_training_attention_path_equals_library_attention(masked):
    # On the CPU, training (bias needs a gradient) writes attention out; it must equal the library call.
    from segbench.models.encoders.swin import WindowAttention, _per_window

    torch.manual_seed(0)
    attn = WindowAttention(dim=8, num_heads=2, window_size=3).double()
    torch.nn.init.normal_(attn.relative_position_bias_table, std=0.5)
    x = torch.randn(2 * 4, 9, 8, dtype=torch.float64)  # batch 2 x 4 windows of 3x3 tokens
    mask = torch.where(torch.rand(4, 9, 9) > 0.3, 0.0, -100.0).double() if masked else None
    out = attn(x, mask)
    n, c = 9, 8
    q, k, v = attn.qkv(x).view(-1, n, 3, 2, 4).permute(2, 0, 3, 1, 4)
    bias = attn.relative_position_bias() + (mask.unsqueeze(1) if masked else 0)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=_per_window(bias, x.shape[0]))
    ref = attn.proj(ref.transpose(1, 2).reshape(-1, n, c))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    params = [attn.relative_position_bias_table, attn.qkv.weight]
    got = torch.autograd.grad(out.square().sum(), params)
    want = torch.autograd.grad(ref.square().sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)
