"""SegFormer weight converters. Hugging Face: numerical equivalence against the installed transformers.
NVlabs and MMSegmentation: key layouts generated here from their source code, converted without missing,
unexpected or mis-shaped keys, round-tripped exactly; MMSegmentation's fused q/k/v split and reversed
fusion order are checked numerically against nn.MultiheadAttention and a functional SegformerHead."""

import re

import pytest
import torch
import torch.nn.functional as F

from segbench import build_encoder, build_model
from segbench.checkpoints.convert import convert, convert_with_report
from segbench.checkpoints.convert.segformer import to_mmseg, to_nvlabs
from tests.numerics import assert_same_function

WIDTHS, DEPTHS, HEADS, SR = [8, 16, 24, 32], [1, 1, 1, 1], [1, 1, 2, 2], [8, 4, 2, 1]
SLIM = dict(encoder="mit_b0", embed_dims=WIDTHS, depths=DEPTHS, num_heads=HEADS, sr_ratios=SR, decoder_dim=32)
HF_EXACT = dict(SLIM, norm_eps=1e-5)  # Hugging Face's LayerNorms all use eps 1e-5
SIZES = [(64, 64), (100, 75)]


# ---------------------------------------------------------------- Hugging Face: numerical equivalence


@pytest.fixture(scope="module")
def hf_models():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    config = transformers.SegformerConfig(
        hidden_sizes=WIDTHS, depths=DEPTHS, num_attention_heads=HEADS, sr_ratios=SR,
        decoder_hidden_size=32, num_labels=5,
    )
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():  # move every tensor away from its initialisation (LayerNorm 1/0, BN stats 0/1)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.decode_head.batch_norm.running_mean.normal_()
        model.decode_head.batch_norm.running_var.uniform_(0.5, 2.0)
    encoder_only = transformers.SegformerModel(config).eval()
    return transformers, model, encoder_only


def _legacy_hf_keys(state):
    """transformers >= 5 module names -> the names in the Hub's files (transformers 4.x), per
    transformers' conversion_mapping for Segformer."""
    renames = [
        (r"stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
        (r"stages\.(\d+)\.blocks\.", r"encoder.block.\1."),
        (r"stages\.(\d+)\.layer_norm", r"encoder.layer_norm.\1"),
        (r"attention\.q_proj", "attention.self.query"),
        (r"attention\.k_proj", "attention.self.key"),
        (r"attention\.v_proj", "attention.self.value"),
        (r"attention\.sequence_reduction\.sequence_reduction", "attention.self.sr"),
        (r"attention\.sequence_reduction\.layer_norm", "attention.self.layer_norm"),
        (r"attention\.o_proj", "attention.output.dense"),
        (r"mlp\.fc1", "mlp.dense1"),
        (r"mlp\.fc2", "mlp.dense2"),
        (r"layernorm_before", "layer_norm_1"),
        (r"layernorm_after", "layer_norm_2"),
        (r"decode_head\.linear_projections", "decode_head.linear_c"),
    ]
    out = {}
    for key, tensor in state.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        out[key] = tensor
    return out


def _hf_logits(hf, x):
    with torch.no_grad():
        return F.interpolate(hf(x).logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def test_hf_semantic_segmentation_gives_the_same_logits(hf_models):
    _, hf, _ = hf_models
    converted, report = convert_with_report(hf.state_dict(), "hf", "segformer", num_classes=5, **HF_EXACT)
    assert report.ok, str(report)
    model = build_model("segformer", 5, **HF_EXACT).eval()
    model.load_state_dict(converted, strict=True)
    default_eps = build_model("segformer", 5, **SLIM).eval()
    default_eps.load_state_dict(converted, strict=True)
    for size in SIZES:
        x = torch.randn(1, 3, *size)
        expected = _hf_logits(hf, x)
        with torch.no_grad():
            assert_same_function(model(x), expected)
            # The original code's eps (1e-6) changes the function only in the noise.
            assert_same_function(default_eps(x), expected, rel=1e-4)


@pytest.mark.parametrize("bug", ["key and value swapped", "a block's two norms swapped", "decoder BN statistics missing"])
def test_hf_logits_check_fails_on_a_broken_conversion(hf_models, bug):
    # The bound of the test above is loose enough for other CPUs' kernels and tight enough for this.
    _, hf, _ = hf_models
    converted = convert(hf.state_dict(), "hf", "segformer", num_classes=5, **HF_EXACT)
    model = build_model("segformer", 5, **HF_EXACT).eval()
    if bug == "key and value swapped":
        k = "encoder.block1.0.attn.kv.weight"
        key, value = converted[k].chunk(2)
        converted[k] = torch.cat([value, key])
    elif bug == "a block's two norms swapped":
        a, b = "encoder.block2.0.norm1.weight", "encoder.block2.0.norm2.weight"
        converted[a], converted[b] = converted[b], converted[a]
    else:
        for name in [n for n in converted if n.startswith("decode_head") and "running_" in n]:
            converted[name] = model.state_dict()[name]  # left at initialisation (0 mean, 1 variance)
    model.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), pytest.raises(AssertionError):
        assert_same_function(model(x), _hf_logits(hf, x))


def test_hub_file_layout_converts_to_the_same_tensors(hf_models):
    _, hf, _ = hf_models
    modern = convert(hf.state_dict(), "hf", "segformer", num_classes=5, **HF_EXACT)
    legacy_state = _legacy_hf_keys(hf.state_dict())
    assert "segformer.encoder.block.0.0.attention.self.key.weight" in legacy_state
    legacy, report = convert_with_report(legacy_state, "hf", "segformer", num_classes=5, **HF_EXACT)
    assert report.ok, str(report)
    assert legacy.keys() == modern.keys() and all(torch.equal(legacy[k], modern[k]) for k in modern)


def test_hf_encoder_matches_hidden_states(hf_models):
    transformers, _, encoder_only = hf_models
    for state in (encoder_only.state_dict(), _legacy_hf_keys(encoder_only.state_dict())):
        converted, report = convert_with_report(state, "hf", "segformer", num_classes=5, **HF_EXACT)
        assert not report.unexpected and not report.mismatched
        assert report.missing and all(k.startswith("decode_head.") for k in report.missing)
        options = {k: v for k, v in HF_EXACT.items() if k not in ("encoder", "decoder_dim")}
        encoder = build_encoder("mit_b0", **options).eval()
        encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in converted.items()}, strict=True)
        x = torch.randn(1, 3, 100, 75)
        with torch.no_grad():
            hidden = encoder_only(x, output_hidden_states=True).hidden_states
            ours = encoder(x)
        assert len(ours) == len(hidden) == 4
        for a, b in zip(ours, hidden):
            assert_same_function(a, b)


def test_hf_checkpoint_for_other_classes_keeps_all_but_the_classifier(hf_models):
    transformers, hf, _ = hf_models
    converted, report = convert_with_report(hf.state_dict(), "hf", "segformer", num_classes=3, **HF_EXACT)
    assert sorted(report.missing) == ["decode_head.classifier.bias", "decode_head.classifier.weight"]
    assert not report.unexpected and not report.mismatched
    classification = transformers.SegformerForImageClassification(hf.config)
    _, report = convert_with_report(classification.state_dict(), "hf", "segformer", num_classes=5, **HF_EXACT)
    assert not report.unexpected and all(k.startswith("decode_head.") for k in report.missing)


# ---------------------------------------------------------------- NVlabs and MMSegmentation: key layouts


def _nvlabs_layout(num_classes=5, decoder_dim=32, conv_seg_channels=128):
    """NVlabs' SegFormer checkpoint: mix_transformer.py (backbone) + segformer_head.py (decode_head)."""
    shapes, previous = {}, 3
    for n, (c, depth, sr, k) in enumerate(zip(WIDTHS, DEPTHS, SR, (7, 3, 3, 3)), start=1):
        p = f"backbone.patch_embed{n}."
        shapes.update({p + "proj.weight": (c, previous, k, k), p + "proj.bias": (c,), p + "norm.weight": (c,), p + "norm.bias": (c,)})
        for b in range(depth):
            p = f"backbone.block{n}.{b}."
            shapes.update({p + "norm1.weight": (c,), p + "norm1.bias": (c,), p + "attn.q.weight": (c, c),
                           p + "attn.q.bias": (c,), p + "attn.kv.weight": (2 * c, c), p + "attn.kv.bias": (2 * c,),
                           p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,), p + "norm2.weight": (c,),
                           p + "norm2.bias": (c,), p + "mlp.fc1.weight": (4 * c, c), p + "mlp.fc1.bias": (4 * c,),
                           p + "mlp.dwconv.dwconv.weight": (4 * c, 1, 3, 3), p + "mlp.dwconv.dwconv.bias": (4 * c,),
                           p + "mlp.fc2.weight": (c, 4 * c), p + "mlp.fc2.bias": (c,)})
            if sr > 1:
                shapes.update({p + "attn.sr.weight": (c, c, sr, sr), p + "attn.sr.bias": (c,),
                               p + "attn.norm.weight": (c,), p + "attn.norm.bias": (c,)})
        shapes[f"backbone.norm{n}.weight"] = shapes[f"backbone.norm{n}.bias"] = (c,)
        shapes[f"decode_head.linear_c{n}.proj.weight"] = (decoder_dim, c)
        shapes[f"decode_head.linear_c{n}.proj.bias"] = (decoder_dim,)
        previous = c
    shapes["decode_head.conv_seg.weight"] = (num_classes, conv_seg_channels, 1, 1)  # unused by SegFormerHead
    shapes["decode_head.conv_seg.bias"] = (num_classes,)
    shapes["decode_head.linear_fuse.conv.weight"] = (decoder_dim, 4 * decoder_dim, 1, 1)
    shapes.update(_bn("decode_head.linear_fuse.bn.", decoder_dim))
    shapes["decode_head.linear_pred.weight"] = (num_classes, decoder_dim, 1, 1)
    shapes["decode_head.linear_pred.bias"] = (num_classes,)
    return shapes


def _mmseg_layout(num_classes=5, decoder_dim=32):
    """MMSegmentation 1.x: backbones/mit.py (MixVisionTransformer) + decode_heads/segformer_head.py."""
    shapes, previous = {}, 3
    for s, (c, depth, sr, k) in enumerate(zip(WIDTHS, DEPTHS, SR, (7, 3, 3, 3))):
        p = f"backbone.layers.{s}.0."
        shapes.update({p + "projection.weight": (c, previous, k, k), p + "projection.bias": (c,),
                       p + "norm.weight": (c,), p + "norm.bias": (c,)})
        for b in range(depth):
            p = f"backbone.layers.{s}.1.{b}."
            shapes.update({p + "norm1.weight": (c,), p + "norm1.bias": (c,),
                           p + "attn.attn.in_proj_weight": (3 * c, c), p + "attn.attn.in_proj_bias": (3 * c,),
                           p + "attn.attn.out_proj.weight": (c, c), p + "attn.attn.out_proj.bias": (c,),
                           p + "norm2.weight": (c,), p + "norm2.bias": (c,),
                           p + "ffn.layers.0.weight": (4 * c, c, 1, 1), p + "ffn.layers.0.bias": (4 * c,),
                           p + "ffn.layers.1.weight": (4 * c, 1, 3, 3), p + "ffn.layers.1.bias": (4 * c,),
                           p + "ffn.layers.4.weight": (c, 4 * c, 1, 1), p + "ffn.layers.4.bias": (c,)})
            if sr > 1:
                shapes.update({p + "attn.sr.weight": (c, c, sr, sr), p + "attn.sr.bias": (c,),
                               p + "attn.norm.weight": (c,), p + "attn.norm.bias": (c,)})
        shapes[f"backbone.layers.{s}.2.weight"] = shapes[f"backbone.layers.{s}.2.bias"] = (c,)
        shapes[f"decode_head.convs.{s}.conv.weight"] = (decoder_dim, c, 1, 1)  # ConvModule with BN: no bias
        shapes.update(_bn(f"decode_head.convs.{s}.bn.", decoder_dim))
        previous = c
    shapes["decode_head.fusion_conv.conv.weight"] = (decoder_dim, 4 * decoder_dim, 1, 1)
    shapes.update(_bn("decode_head.fusion_conv.bn.", decoder_dim))
    shapes["decode_head.conv_seg.weight"] = (num_classes, decoder_dim, 1, 1)
    shapes["decode_head.conv_seg.bias"] = (num_classes,)
    return shapes


def _bn(prefix, channels):
    return {prefix + name: (channels,) for name in ("weight", "bias", "running_mean", "running_var")} | {
        prefix + "num_batches_tracked": ()
    }


def _random_state(shapes):
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape) + 0.5
        else:
            state[key] = 0.2 * torch.randn(shape)
    return state


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nvlabs_checkpoint_converts_and_round_trips():
    original = _random_state(_nvlabs_layout())
    converted, report = convert_with_report(original, "nvlabs", "segformer", num_classes=5, **SLIM)
    assert report.ok, str(report)
    model = build_model("segformer", 5, **SLIM).eval()
    model.load_state_dict(converted, strict=True)
    exported = to_nvlabs(model.state_dict())
    _assert_same_state(exported, {k: v for k, v in original.items() if "conv_seg" not in k})
    again = build_model("segformer", 5, **SLIM).eval()
    again.load_state_dict(convert(exported, "nvlabs", "segformer", num_classes=5, **SLIM), strict=True)
    x = torch.randn(1, 3, 100, 75)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_nvlabs_imagenet_file_converts_to_encoder():
    shapes = {k.removeprefix("backbone."): v for k, v in _nvlabs_layout().items() if k.startswith("backbone.")}
    shapes |= {"head.weight": (1000, WIDTHS[-1]), "head.bias": (1000,)}
    converted, report = convert_with_report(_random_state(shapes), "nvlabs", "segformer", num_classes=5, **SLIM)
    assert not report.unexpected and not report.mismatched
    assert report.missing and all(k.startswith("decode_head.") for k in report.missing)


def test_mmseg_checkpoint_converts_and_round_trips():
    original = _random_state(_mmseg_layout())
    options = dict(SLIM, projection_bn=True)
    converted, report = convert_with_report(original, "mmseg", "segformer", num_classes=5, **options)
    assert report.ok, str(report)
    model = build_model("segformer", 5, **options).eval()
    model.load_state_dict(converted, strict=True)
    _assert_same_state(to_mmseg(model.state_dict()), original)
    again = build_model("segformer", 5, **options).eval()
    again.load_state_dict(convert(to_mmseg(model.state_dict()), "mmseg", "segformer", num_classes=5, **options))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    with pytest.raises(ValueError, match="projection_bn=True"):
        convert(original, "mmseg", "segformer", num_classes=5, **SLIM)
    backbone_only = {k.removeprefix("backbone."): v for k, v in original.items() if k.startswith("backbone.")}
    _, report = convert_with_report(backbone_only, "mmseg", "segformer", num_classes=5, **options)
    assert not report.unexpected and all(k.startswith("decode_head.") for k in report.missing)


def test_mmseg_fused_qkv_and_fusion_order_compute_mmsegs_function():
    original = _random_state(_mmseg_layout())
    options = dict(SLIM, projection_bn=True)
    model = build_model("segformer", 5, **options).eval()
    model.load_state_dict(convert(original, "mmseg", "segformer", num_classes=5, **options), strict=True)

    # Attention of stage 3 (2 heads, reduction 2) against nn.MultiheadAttention holding mmseg's tensors.
    p = "backbone.layers.2.1.0.attn."
    mha = torch.nn.MultiheadAttention(24, 2, batch_first=True).eval()
    mha.load_state_dict({"in_proj_weight": original[p + "attn.in_proj_weight"], "in_proj_bias": original[p + "attn.in_proj_bias"],
                         "out_proj.weight": original[p + "attn.out_proj.weight"], "out_proj.bias": original[p + "attn.out_proj.bias"]})
    attn = model.encoder.block3[0].attn
    tokens = torch.randn(1, 6 * 4, 24)
    with torch.no_grad():
        reduced = F.conv2d(tokens.transpose(1, 2).reshape(1, 24, 6, 4), original[p + "sr.weight"], original[p + "sr.bias"], stride=2)
        reduced = F.layer_norm(reduced.flatten(2).transpose(1, 2), (24,), original[p + "norm.weight"], original[p + "norm.bias"], eps=1e-5)
        expected = mha(tokens, reduced, reduced)[0]
        assert (attn(tokens, 6, 4) - expected).abs().max() <= 1e-5

    # SegformerHead.forward: conv-BN-ReLU per stage, resize, concat c1..c4, fusion conv-BN-ReLU, conv_seg.
    def conv_bn_relu(x, prefix):
        y = F.conv2d(x, original[prefix + "conv.weight"])
        return F.relu(F.batch_norm(y, original[prefix + "bn.running_mean"], original[prefix + "bn.running_var"],
                                   original[prefix + "bn.weight"], original[prefix + "bn.bias"], eps=1e-5))

    with torch.no_grad():
        features = model.encoder(torch.randn(1, 3, 64, 48))
        size = features[0].shape[-2:]
        outs = [F.interpolate(conv_bn_relu(f, f"decode_head.convs.{i}."), size=size, mode="bilinear", align_corners=False)
                for i, f in enumerate(features)]
        fused = conv_bn_relu(torch.cat(outs, dim=1), "decode_head.fusion_conv.")
        expected = F.conv2d(fused, original["decode_head.conv_seg.weight"], original["decode_head.conv_seg.bias"])
        assert (model.decode_head(features) - expected).abs().max() <= 1e-5


def test_paper_head_weights_refuse_the_mmseg_variant_and_back():
    nvlabs = _random_state(_nvlabs_layout())
    with pytest.raises(ValueError, match="projection_bn=False"):
        convert(nvlabs, "nvlabs", "segformer", num_classes=5, **SLIM, projection_bn=True)
    model = build_model("segformer", 5, **SLIM, projection_bn=True)
    with pytest.raises(KeyError, match="projection_bn"):
        to_nvlabs(model.state_dict())
