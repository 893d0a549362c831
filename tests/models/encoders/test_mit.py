"""Mix Transformer encoders: Table 6 configurations, the stage contract, stochastic depth, any input size,
LayerNorm eps layout, and loading NVlabs' ImageNet key layout."""

import pytest
import torch
from torch import nn

from segbench import build_encoder
from segbench.checkpoints.load import load_backbone_weights
from segbench.models.encoders.mit import MixTransformer
from segbench.models.registry import ENCODERS, list_encoders

SLIM = dict(embed_dims=[8, 16, 24, 32], depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 4])

# Paper Table 6: (widths, depths); heads 1, 2, 5, 8 and reduction ratios 8, 4, 2, 1 for every size.
TABLE6 = {
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}


def test_all_sizes_registered_as_mit_family():
    names = [n for n in list_encoders() if n.startswith("mit_")]
    assert names and sorted(names) == sorted(TABLE6)
    assert all(ENCODERS[n].kind == "mit" for n in names)


@pytest.mark.parametrize("name", sorted(TABLE6))
def test_table6_configuration(name):
    widths, depths = TABLE6[name]
    with torch.device("meta"):
        encoder = build_encoder(name)
    assert encoder.out_channels == widths
    assert encoder.strides == (4, 8, 16, 32)
    for stage, (width, depth, heads, sr) in enumerate(zip(widths, depths, (1, 2, 5, 8), (8, 4, 2, 1)), start=1):
        blocks = getattr(encoder, f"block{stage}")
        assert len(blocks) == depth
        attn = blocks[0].attn
        assert attn.num_heads == heads and attn.q.in_features == width and attn.kv.out_features == 2 * width
        if sr > 1:
            assert attn.sr.kernel_size == (sr, sr) and attn.sr.stride == (sr, sr)
        else:
            assert not hasattr(attn, "sr")
        assert blocks[0].mlp.fc1.out_features == 4 * width  # Mix-FFN expansion 4
        assert blocks[0].mlp.dwconv.dwconv.groups == 4 * width  # depthwise 3x3
    embed1, embed2 = encoder.patch_embed1.proj, encoder.patch_embed2.proj
    assert (embed1.kernel_size, embed1.stride, embed1.padding) == ((7, 7), (4, 4), (3, 3))
    assert (embed2.kernel_size, embed2.stride, embed2.padding) == ((3, 3), (2, 2), (1, 1))


@pytest.mark.parametrize("size, expected", [((64, 64), [(16, 16), (8, 8), (4, 4), (2, 2)]),
                                            ((100, 75), [(25, 19), (13, 10), (7, 5), (4, 3)])])
def test_stage_outputs_follow_contract_for_any_size(size, expected):
    encoder = build_encoder("mit_b0", **SLIM).eval()
    features = encoder(torch.randn(2, 3, *size))
    assert [tuple(f.shape[-2:]) for f in features] == expected
    assert tuple(f.shape[1] for f in features) == encoder.out_channels == (8, 16, 24, 32)
    assert all(f.shape[0] == 2 for f in features)


def test_too_small_input_raises_with_the_valid_sizes():
    encoder = build_encoder("mit_b0", **SLIM).eval()
    assert encoder.min_input_size == 29  # stage 1 (stride 4) must be >= the 8x8 reduction conv
    encoder(torch.randn(1, 3, 29, 29))
    with pytest.raises(ValueError, match="at least 29x29"):
        encoder(torch.randn(1, 3, 28, 64))
    assert build_encoder("mit_b0", **SLIM, sr_ratios=[1, 1, 1, 1]).min_input_size == 1


def test_stochastic_depth_rises_linearly_and_acts_only_in_training():
    with torch.device("meta"):
        encoder = build_encoder("mit_b2")  # 16 blocks
    rates = [
        getattr(block.drop_path, "drop_prob", 0.0)
        for stage in range(1, 5)
        for block in getattr(encoder, f"block{stage}")
    ]
    assert len(rates) == 16
    assert rates == pytest.approx([0.1 * i / 15 for i in range(16)])
    assert isinstance(encoder.block1[0].drop_path, nn.Identity)  # rate 0 -> no-op module


def test_layernorm_eps_follow_the_official_code():
    encoder = build_encoder("mit_b0", **SLIM)
    assert encoder.patch_embed1.norm.eps == 1e-5 and encoder.block1[0].attn.norm.eps == 1e-5
    assert encoder.block1[0].norm1.eps == encoder.block1[0].norm2.eps == encoder.norm1.eps == 1e-6
    hf_like = build_encoder("mit_b0", **SLIM, norm_eps=1e-5)
    assert hf_like.block4[0].norm2.eps == hf_like.norm4.eps == 1e-5


def test_in_channels_and_gradients_reach_every_parameter():
    encoder = build_encoder("mit_b0", **SLIM, in_channels=1, drop_path_rate=0.0)
    assert encoder.patch_embed1.proj.in_channels == 1
    sum(f.mean() for f in encoder(torch.randn(1, 1, 40, 36))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        build_encoder("mit_b0", embed_dims=[8, 16, 24, 30], num_heads=[1, 2, 5, 8])
    with pytest.raises(ValueError, match="4 entries"):
        build_encoder("mit_b0", depths=[1, 1, 1])


def _nvlabs_imagenet_layout(widths, depths, sr_ratios, num_classes=1000):
    """Keys and shapes of NVlabs' ``mit_b*.pth`` (mix_transformer.py, classification variant)."""
    shapes, previous = {}, 3
    for n, (c, depth, sr, k) in enumerate(zip(widths, depths, sr_ratios, (7, 3, 3, 3)), start=1):
        shapes[f"patch_embed{n}.proj.weight"] = (c, previous, k, k)
        shapes[f"patch_embed{n}.proj.bias"] = shapes[f"patch_embed{n}.norm.weight"] = shapes[f"patch_embed{n}.norm.bias"] = (c,)
        for b in range(depth):
            p = f"block{n}.{b}."
            shapes.update({p + "norm1.weight": (c,), p + "norm1.bias": (c,), p + "attn.q.weight": (c, c),
                           p + "attn.q.bias": (c,), p + "attn.kv.weight": (2 * c, c), p + "attn.kv.bias": (2 * c,),
                           p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,), p + "norm2.weight": (c,),
                           p + "norm2.bias": (c,), p + "mlp.fc1.weight": (4 * c, c), p + "mlp.fc1.bias": (4 * c,),
                           p + "mlp.dwconv.dwconv.weight": (4 * c, 1, 3, 3), p + "mlp.dwconv.dwconv.bias": (4 * c,),
                           p + "mlp.fc2.weight": (c, 4 * c), p + "mlp.fc2.bias": (c,)})
            if sr > 1:
                shapes.update({p + "attn.sr.weight": (c, c, sr, sr), p + "attn.sr.bias": (c,),
                               p + "attn.norm.weight": (c,), p + "attn.norm.bias": (c,)})
        shapes[f"norm{n}.weight"] = shapes[f"norm{n}.bias"] = (c,)
        previous = c
    shapes["head.weight"], shapes["head.bias"] = (num_classes, widths[-1]), (num_classes,)
    return shapes


def test_nvlabs_imagenet_file_loads_directly():
    shapes = _nvlabs_imagenet_layout(SLIM["embed_dims"], SLIM["depths"], (8, 4, 2, 1))
    state = {k: torch.randn(s) for k, s in shapes.items()}
    encoder = build_encoder("mit_b0", **SLIM)
    report = load_backbone_weights(encoder, state)
    assert sorted(report.skipped) == ["head.bias", "head.weight"]
    assert not report.missing and len(report.loaded) == len(encoder.state_dict())
    assert torch.equal(encoder.block2[1].attn.kv.weight, state["block2.1.attn.kv.weight"])
    assert isinstance(encoder, MixTransformer)
