"""Swin-UPerNet weights: Hugging Face proven numerically; Microsoft, MMSegmentation and timm by their documented
key layouts (built here from the publishers' module structure, independently of the converter), round trips and
a numerical check of MMSegmentation's unfold-ordered patch merging."""

import re

import pytest
import torch
import torch.nn.functional as F

import segbench
from segbench.checkpoints.convert import convert, convert_with_report
from segbench.checkpoints.convert.swin import to_format
from tests.numerics import assert_same_function

DIM, DEPTHS, HEADS, WINDOW, CLASSES = 8, (1, 2, 1, 1), (1, 2, 2, 4), 7, 5
OPTS = dict(embed_dim=DIM, depths=DEPTHS, num_heads=HEADS, channels=16, aux_channels=8, drop_path_rate=0.0)
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def randomized(module):
    """Random values everywhere (BN statistics included), so a swapped or identity-initialised tensor shows."""
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor) * 0.3 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return module


def new_model():
    return segbench.build_model("upernet", CLASSES, **OPTS)


# ---- the publishers' layouts (key -> shape) -----------------------------------------------------------


def block_layout(c, heads):
    n = WINDOW * WINDOW
    return {
        "norm1.weight": (c,), "norm1.bias": (c,),
        "attn.relative_position_bias_table": ((2 * WINDOW - 1) ** 2, heads), "attn.relative_position_index": (n, n),
        "attn.qkv.weight": (3 * c, c), "attn.qkv.bias": (3 * c,), "attn.proj.weight": (c, c), "attn.proj.bias": (c,),
        "norm2.weight": (c,), "norm2.bias": (c,),
        "mlp.fc1.weight": (4 * c, c), "mlp.fc1.bias": (4 * c,), "mlp.fc2.weight": (c, 4 * c), "mlp.fc2.bias": (c,),
    }  # fmt: skip


def microsoft_classifier_layout():
    """Swin-Transformer's ImageNet release: patch_embed, layers.{i}.blocks.{j}, downsample at the END of a
    stage, final norm, head; persistent buffers relative_position_index and attn_mask (shifted blocks)."""
    keys = {"patch_embed.proj.weight": (DIM, 3, 4, 4), "patch_embed.proj.bias": (DIM,)}
    keys |= {"patch_embed.norm.weight": (DIM,), "patch_embed.norm.bias": (DIM,)}
    for i, (depth, heads) in enumerate(zip(DEPTHS, HEADS)):
        c = DIM * 2**i
        for j in range(depth):
            keys |= {f"layers.{i}.blocks.{j}.{k}": shape for k, shape in block_layout(c, heads).items()}
            if j % 2:
                keys[f"layers.{i}.blocks.{j}.attn_mask"] = (16, WINDOW * WINDOW, WINDOW * WINDOW)
        if i < len(DEPTHS) - 1:
            p = f"layers.{i}.downsample."
            keys |= {p + "reduction.weight": (2 * c, 4 * c), p + "norm.weight": (4 * c,), p + "norm.bias": (4 * c,)}
    last = DIM * 2 ** (len(DEPTHS) - 1)
    return keys | {"norm.weight": (last,), "norm.bias": (last,), "head.weight": (1000, last), "head.bias": (1000,)}


def mmseg_head_layout(conv="conv", bn="bn", classifier="conv_seg"):
    widths, ch, aux = [DIM * 2**i for i in range(4)], OPTS["channels"], OPTS["aux_channels"]
    keys = {}

    def conv_module(prefix, cin, cout, k):
        keys[f"{prefix}.{conv}.weight"] = (cout, cin, k, k)
        keys.update({f"{prefix}.{bn}.{p}": (() if p == "num_batches_tracked" else (cout,)) for p in BN})

    for b in range(4):
        conv_module(f"decode_head.psp_modules.{b}.1", widths[3], ch, 1)
    conv_module("decode_head.bottleneck", widths[3] + 4 * ch, ch, 3)
    for level in range(3):
        conv_module(f"decode_head.lateral_convs.{level}", widths[level], ch, 1)
        conv_module(f"decode_head.fpn_convs.{level}", ch, ch, 3)
    conv_module("decode_head.fpn_bottleneck", 4 * ch, ch, 3)
    keys |= {f"decode_head.{classifier}.weight": (CLASSES, ch, 1, 1), f"decode_head.{classifier}.bias": (CLASSES,)}
    conv_module("auxiliary_head.convs.0", widths[2], aux, 3)
    keys[f"auxiliary_head.{classifier}.weight"] = (CLASSES, aux, 1, 1)
    return keys | {f"auxiliary_head.{classifier}.bias": (CLASSES,)}


def microsoft_segmentation_layout():
    """Swin-Transformer-Semantic-Segmentation: backbone.<classifier layout without norm/head> + norm{i} +
    MMSegmentation 0.x UPerHead/FCNHead."""
    backbone = {k: s for k, s in microsoft_classifier_layout().items() if not k.startswith(("norm.", "head."))}
    keys = {f"backbone.{k}": s for k, s in backbone.items()}
    keys |= {f"backbone.norm{i}.{p}": (DIM * 2**i,) for i in range(4) for p in ("weight", "bias")}
    return keys | mmseg_head_layout()


def mmseg_layout():
    renames = [
        (r"^backbone\.patch_embed\.proj\.", "backbone.patch_embed.projection."),
        (r"^backbone\.layers\.", "backbone.stages."),
        (r"\.attn\.", ".attn.w_msa."),
        (r"\.mlp\.fc1\.", ".ffn.layers.0.0."),
        (r"\.mlp\.fc2\.", ".ffn.layers.1."),
    ]
    keys = {}
    for key, shape in microsoft_segmentation_layout().items():
        if key.endswith("attn_mask"):  # MMSegmentation computes the mask on the fly
            continue
        for pattern, target in renames:
            key = re.sub(pattern, target, key)
        keys[key] = shape
    return keys


def timm_layout():
    """timm >= 0.9: merging at the START of stages 1..3 (layers.{i+1}.downsample), head.fc, no buffers."""
    keys = {}
    for key, shape in microsoft_classifier_layout().items():
        if key.endswith(("relative_position_index", "attn_mask")):
            continue
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) + 1}.downsample", key)
        keys[key.replace("head.", "head.fc.")] = shape
    return keys


def random_state(layout):
    return {k: (torch.randint(0, 9, s) if k.endswith(("index", "tracked")) else torch.randn(s)) for k, s in layout.items()}


def shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


# ---- Hugging Face: the same function --------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    backbone = transformers.SwinConfig(
        embed_dim=DIM, depths=list(DEPTHS), num_heads=list(HEADS), window_size=WINDOW, drop_path_rate=0.0,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = transformers.UperNetConfig(
        backbone_config=backbone, hidden_size=OPTS["channels"], auxiliary_channels=OPTS["aux_channels"], num_labels=CLASSES
    )
    return randomized(transformers.UperNetForSemanticSegmentation(config)).eval()


@pytest.mark.parametrize("size", [(64, 64), (100, 75)])
def test_hf_logits_match(hf_model, size):
    converted, report = convert_with_report(hf_model.state_dict(), "hf", "upernet", num_classes=CLASSES, **OPTS)
    assert report.ok, str(report)
    model = new_model().eval()
    model.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected = hf_model(pixel_values=x).logits
        got = model(x)
        assert got.shape == expected.shape == (1, CLASSES, *size)
        assert_same_function(got, expected)
        # the auxiliary head too (HF computes it on the same stage-3 feature map)
        hf_aux = hf_model.auxiliary_head(hf_model.backbone(x).feature_maps)
        assert_same_function(model.aux_head(model.encoder(x)[2]), hf_aux)


def _swapped(state, a, b):
    broken = dict(state)
    broken[a], broken[b] = state[b], state[a]
    return broken


@pytest.mark.parametrize("bug", ["q and k of one block swapped", "two blocks' MLPs swapped", "one norm left at 1"])
def test_hf_logits_check_fails_on_a_broken_conversion(hf_model, bug):
    # The bound of test_hf_logits_match is loose enough for other CPUs' kernels and tight enough for this.
    converted = convert(hf_model.state_dict(), "hf", "upernet", num_classes=CLASSES, **OPTS)
    block = "encoder.layers.1.blocks.{}."
    if bug == "q and k of one block swapped":
        key = block.format(0) + "attn.qkv.weight"
        q, k, v = converted[key].chunk(3)
        converted[key] = torch.cat([k, q, v])
    elif bug == "two blocks' MLPs swapped":
        converted = _swapped(converted, block.format(0) + "mlp.fc1.weight", block.format(1) + "mlp.fc1.weight")
    else:
        key = block.format(1) + "norm2.weight"
        converted[key] = torch.ones_like(converted[key])
    assert set(converted) == set(new_model().state_dict()), "the test must break values, not keys"
    model = new_model().eval()
    model.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), pytest.raises(AssertionError):
        assert_same_function(model(x), hf_model(pixel_values=x).logits)


def test_hf_hub_names_of_transformers_4(hf_model):
    v5 = hf_model.state_dict()
    renames = [  # transformers 5 module names -> the names in the Hub's 4.x files
        ("backbone.swin.embeddings.", "backbone.embeddings."), ("backbone.swin.encoder.", "backbone.encoder."),
        ("attention.q_proj.", "attention.self.query."), ("attention.k_proj.", "attention.self.key."),
        ("attention.v_proj.", "attention.self.value."), ("attention.o_proj.", "attention.output.dense."),
        ("attention.relative_position_bias.relative_position_bias_table", "attention.self.relative_position_bias_table"),
        ("mlp.fc1.", "intermediate.dense."), ("mlp.fc2.", "output.dense."),
    ]
    v4 = {}
    for key, value in v5.items():
        for old, new in renames:
            key = key.replace(old, new)
        v4[key] = value
    v4["backbone.encoder.layers.0.blocks.0.attention.self.relative_position_index"] = torch.zeros(49 * 49, dtype=torch.long)
    a = convert(v5, "hf", "upernet", num_classes=CLASSES, **OPTS)
    b, report = convert_with_report(v4, "hf", "upernet", num_classes=CLASSES, **OPTS)
    assert report.ok, str(report)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_new_label_set_leaves_classifiers_out(hf_model):
    converted, report = convert_with_report(hf_model.state_dict(), "hf", "upernet", num_classes=7, **OPTS)
    assert sorted(report.missing) == ["aux_head.4.bias", "aux_head.4.weight", "classifier.bias", "classifier.weight"]
    assert not report.unexpected and not report.mismatched


# ---- Microsoft, MMSegmentation, timm: layouts and round trips --------------------------------------------


def test_microsoft_imagenet_checkpoint_gives_the_encoder():
    state = random_state(microsoft_classifier_layout())
    converted, report = convert_with_report({"model": state}, "microsoft", "upernet", num_classes=CLASSES, **OPTS)
    assert not report.unexpected and not report.mismatched
    assert report.missing and all(not k.startswith("encoder.") for k in report.missing)  # only the head is missing
    for key in ("layers.1.blocks.1.attn.qkv.weight", "layers.2.downsample.reduction.weight"):
        assert torch.equal(converted[f"encoder.{key}"], state[key])
    assert torch.equal(converted["encoder.norm3.weight"], torch.ones(8 * DIM))  # new output norms start at identity


def _round_trip(fmt, layout):
    source = randomized(new_model()).eval()
    exported = to_format(source.state_dict(), fmt)
    assert shapes(exported) == layout
    converted, report = convert_with_report(exported, fmt, "upernet", num_classes=CLASSES, **OPTS)
    return source, converted, report


def _assert_same_logits(source, converted):
    target = new_model().eval()
    target.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_microsoft_segmentation_release_round_trip():
    layout = {k: s for k, s in microsoft_segmentation_layout().items() if not k.endswith(("index", "attn_mask"))}
    source, converted, report = _round_trip("microsoft", layout)
    assert report.ok, str(report)
    assert all(torch.equal(converted[k], v) for k, v in source.state_dict().items())
    _assert_same_logits(source, converted)
    # the released files also carry the attention buffers: they are dropped
    release = random_state(microsoft_segmentation_layout())
    _, report = convert_with_report(release, "microsoft", "upernet", num_classes=CLASSES, **OPTS)
    assert report.ok, str(report)


def test_mmseg_round_trip():
    layout = {k: s for k, s in mmseg_layout().items() if not k.endswith("relative_position_index")}
    source, converted, report = _round_trip("mmseg", layout)
    assert report.ok, str(report)
    assert all(torch.equal(converted[k], v) for k, v in source.state_dict().items())
    _assert_same_logits(source, converted)
    checkpoint = {"state_dict": random_state(mmseg_layout()), "meta": {}}
    _, report = convert_with_report(checkpoint, "mmseg", "upernet", num_classes=CLASSES, **OPTS)
    assert report.ok, str(report)


def test_mmseg_imagenet_backbone_file():
    # MMSegmentation's converted ImageNet Swin: its backbone keys without "backbone.", and the final norm.
    backbone = {k.removeprefix("backbone."): s for k, s in mmseg_layout().items() if re.match(r"backbone\.(?!norm)", k)}
    state = random_state(backbone | {"norm.weight": (8 * DIM,), "norm.bias": (8 * DIM,)})
    converted, report = convert_with_report(state, "mmseg", "upernet", num_classes=CLASSES, **OPTS)
    assert not report.unexpected and not report.mismatched
    assert report.missing and all(not k.startswith("encoder.") for k in report.missing)
    assert torch.equal(converted["encoder.layers.1.blocks.1.mlp.fc2.weight"], state["stages.1.blocks.1.ffn.layers.1.weight"])


def test_mmseg_merging_is_unfold_ordered():
    # MMSegmentation's PatchMerging: nn.Unfold(2, stride 2) -> LayerNorm -> Linear, with its own weights.
    source = randomized(new_model())
    exported = to_format(source.state_dict(), "mmseg")
    merging = source.encoder.layers[0].downsample
    x = torch.randn(2, 6, 10, DIM)
    unfolded = F.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).transpose(1, 2)  # (B, 15, 4C)
    prefix = "backbone.stages.0.downsample."
    norm_w, norm_b, reduction = (exported[prefix + k] for k in ("norm.weight", "norm.bias", "reduction.weight"))
    expected = F.layer_norm(unfolded, (4 * DIM,), norm_w, norm_b) @ reduction.T
    with torch.no_grad():
        torch.testing.assert_close(merging(x).reshape(2, 15, 2 * DIM), expected)
        assert not torch.allclose(merging.reduction.weight, reduction)  # the layouts really differ


def test_timm_round_trip_and_layouts():
    layout = {k: s for k, s in timm_layout().items() if not k.startswith(("norm.", "head."))}
    source, converted, report = _round_trip("timm", layout)
    assert not report.unexpected and not report.mismatched
    assert report.missing and all(not k.startswith("encoder.") for k in report.missing)
    with torch.no_grad():  # timm has no output norms: they come back as identity
        for i in range(4):
            getattr(source.encoder, f"norm{i}").weight.fill_(1.0)
            getattr(source.encoder, f"norm{i}").bias.zero_()
    assert all(torch.equal(converted[k], v) for k, v in source.state_dict().items() if k.startswith("encoder."))
    _assert_same_logits(source, {**source.state_dict(), **converted})
    # a full timm file (head.fc, norm) and a pre-0.9 one (Microsoft's layout) both give the whole encoder
    for state in (random_state(timm_layout()), random_state(microsoft_classifier_layout())):
        converted, report = convert_with_report(state, "timm", "upernet", num_classes=CLASSES, **OPTS)
        assert not report.unexpected and not report.mismatched
        assert all(not k.startswith("encoder.") for k in report.missing)
    assert torch.equal(converted["encoder.layers.0.downsample.norm.weight"], state["layers.0.downsample.norm.weight"])


def test_unknown_export_format():
    with pytest.raises(ValueError, match="mmseg"):
        to_format({}, "detectron")
