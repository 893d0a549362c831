import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import segbench
from segbench.models.registry import ARCHITECTURES, ENCODERS

SLIM = dict(embed_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), channels=16, aux_channels=8, drop_path_rate=0.0)


def count(module):
    return sum(p.numel() for p in module.parameters())


# Swin paper Table 3 (UperNet, ADE20K, 150 classes, with the auxiliary head): 60M, 81M, 121M.
@pytest.mark.parametrize(
    "encoder, exact, paper", [("swin_t", 59_941_862, 60e6), ("swin_s", 81_259_766, 81e6), ("swin_b", 121_279_716, 121e6)]
)
def test_paper_parameter_counts(encoder, exact, paper):
    with torch.device("meta"):
        model = segbench.build_model("upernet", 150, encoder=encoder)
    assert count(model) == exact
    assert abs(count(model) - paper) / paper < 0.015


@pytest.mark.parametrize("encoder, paper_gflops", [("swin_t", 945), ("swin_s", 1038), ("swin_b", 1188)])
def test_paper_flops(encoder, paper_gflops):
    # Table 3: FLOPs (multiply-adds) of UperNet at 512x2048, counted on the meta device (nothing computed).
    with torch.device("meta"):
        model = segbench.build_model("upernet", 150, encoder=encoder).eval()
        x = torch.empty(1, 3, 512, 2048)
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
    macs = counter.get_total_flops() / 2
    assert abs(macs - paper_gflops * 1e9) / (paper_gflops * 1e9) < 0.005


def test_head_layout():
    with torch.device("meta"):
        model = segbench.build_model("upernet", 150, encoder="swin_t")
    head = model.decode_head
    assert [branch[0].output_size for branch in head.ppm] == [1, 2, 3, 6]
    assert [conv[0].in_channels for conv in head.lateral_convs] == [96, 192, 384]
    assert all(conv[0].kernel_size == (1, 1) and conv[0].out_channels == 512 for conv in head.lateral_convs)
    assert all(conv[0].kernel_size == (3, 3) for conv in head.fpn_convs) and len(head.fpn_convs) == 3
    assert head.ppm_bottleneck[0].in_channels == 768 + 4 * 512
    assert head.fuse[0].in_channels == 4 * 512 and head.fuse[0].kernel_size == (3, 3)
    assert model.dropout.p == 0.1 and model.classifier.kernel_size == (1, 1) and model.classifier.out_channels == 150
    # auxiliary FCN head on stage 3 (384 channels) -> 256 -> classes, weight 0.4
    assert model.aux_head[0].in_channels == 384 and model.aux_head[0].out_channels == 256
    assert model.aux_head[-1].out_channels == 150 and model.aux_weight == 0.4
    assert model.recipe == "transformer" and ARCHITECTURES["upernet"].recipe == "transformer"


@pytest.mark.parametrize("size", [(64, 64), (100, 75), (33, 129)])
def test_logits_and_aux_at_input_resolution(size):
    model = segbench.build_model("upernet", 4, in_channels=2, **SLIM).train()
    out = model(torch.randn(2, 2, *size))
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (2, 4, *size)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, *size)).shape == (1, 4, *size)


def test_without_aux_head():
    model = segbench.build_model("upernet", 4, aux_head=False, **SLIM).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and model.aux_head is None and model.aux_weight == 0.0


def test_head_is_fpn_fused_at_stride_4():
    # The prediction is made at stride 4 and upsampled; the classifier sees the fused 4-level features.
    model = segbench.build_model("upernet", 4, **SLIM).eval()
    seen = []
    model.classifier.register_forward_hook(lambda module, inputs, output: seen.append(tuple(inputs[0].shape)))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
    assert seen == [(1, 16, 16, 24)]


@pytest.mark.skipif("resnet50" not in segbench.list_encoders(), reason="ResNet encoders not available")
def test_resnet_encoder():
    with torch.device("meta"):
        full = segbench.build_model("upernet", 150, encoder="resnet50")
    # the UPerNet paper's CNN setup: the last four ResNet stages, aux head on layer3 (1024 channels)
    assert [conv[0].in_channels for conv in full.decode_head.lateral_convs] == [256, 512, 1024]
    assert full.aux_head[0].in_channels == 1024 and full.recipe == "cnn"
    assert ENCODERS["resnet50"].kind == "resnet"
    model = segbench.build_model("upernet", 3, encoder="resnet50", in_channels=1, channels=8, aux_channels=4).train()
    out = model(torch.randn(2, 1, 45, 61))
    assert out["out"].shape == out["aux"].shape == (2, 3, 45, 61)


def test_bad_options():
    with pytest.raises(ValueError, match="only apply to Swin"):
        segbench.build_model("upernet", 3, encoder="resnet50", depths=(1, 1, 1, 1))
    with pytest.raises(KeyError, match="swin_t"):
        segbench.build_model("upernet", 3, encoder="swin_x")
