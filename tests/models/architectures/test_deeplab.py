"""DeepLab v2 (ASPP-L, optional CRF), v3 (ASPP + image pooling, multi-grid) and v3+ (decoder)."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from segbench import build_model

RESNET50_TRUNK = 23_508_032  # torchvision resnet50 without fc
RESNET101_TRUNK = 42_500_160


def _count(name: str, **options) -> int:
    with torch.device("meta"):
        model = build_model(name, 21, **options)
    return sum(p.numel() for p in model.parameters())


def _train_step(model, x, num_classes):
    model.train()
    out = model(x)
    logits = out["out"] if isinstance(out, dict) else out
    target = torch.randint(0, num_classes, (x.shape[0], *x.shape[-2:]))
    loss = F.cross_entropy(logits, target)
    if isinstance(out, dict):
        loss = loss + model.aux_weight * F.cross_entropy(out["aux"], target)
    loss.backward()
    return out


def _without_gradient(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


def _dilations(convs) -> list[int]:
    return [c.dilation[0] for c in convs]


# --- DeepLab v3 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("encoder", "expected"), [("resnet50", 42_004_074), ("resnet101", 60_996_202)])
def test_deeplabv3_parameter_count_equals_torchvision(encoder, expected):
    # torchvision's documented num_params of deeplabv3_resnet50/101 (21 classes, aux classifier)
    assert _count("deeplabv3", encoder=encoder, aux_head=True) == expected


def test_deeplabv3_rates_multi_grid_and_torchvision_layout():
    with torch.device("meta"):
        model = build_model("deeplabv3", 21, aux_head=True)
    assert model.encoder.strides[-1] == 8
    assert _dilations(model.aspp.convs[i][0] for i in (1, 2, 3)) == [12, 24, 36]  # doubled at OS 8
    assert _dilations(b.conv2 for b in model.encoder.layer4) == [4, 8, 16]  # rate 4 x (1, 2, 4)
    shapes = {k: tuple(v.shape) for k, v in model.aspp.state_dict().items()}
    # torchvision ASPP: convs.0 1x1, convs.1-3 atrous, convs.4 = (pool, conv, bn, relu), project.0 1x1
    assert shapes["convs.0.0.weight"] == (256, 2048, 1, 1)
    assert shapes["convs.3.0.weight"] == (256, 2048, 3, 3)
    assert shapes["convs.4.1.weight"] == (256, 2048, 1, 1)
    assert shapes["convs.4.2.running_var"] == (256,)
    assert shapes["project.0.weight"] == (256, 1280, 1, 1)
    assert model.aux_weight == 0.5 and model.classifier.out_channels == 21
    with torch.device("meta"):
        model = build_model("deeplabv3", 21, output_stride=16, multi_grid=None)
    assert _dilations(model.aspp.convs[i][0] for i in (1, 2, 3)) == [6, 12, 18]
    assert _dilations(b.conv2 for b in model.encoder.layer4) == [1, 2, 2]  # torchvision's plain dilation


def test_deeplabv3_shapes_and_gradients():
    model = build_model("deeplabv3", 4, encoder="resnet18", aux_head=True)
    # the paper's (1, 2, 4) on resnet18's two-block layer4: (1, 2) times the stage rate 4
    assert [(b.conv1.dilation[0], b.conv2.dilation[0]) for b in model.encoder.layer4] == [(4, 4), (8, 8)]
    out = _train_step(model, torch.randn(2, 3, 65, 97), 4)
    assert out["out"].shape == out["aux"].shape == (2, 4, 65, 97)
    assert _without_gradient(model) == []
    with torch.no_grad():
        logits = model.eval()(torch.randn(1, 3, 47, 33))
    assert logits.shape == (1, 4, 47, 33) and logits.dtype == torch.float32


def test_image_pooling_branch_trains_with_batch_of_one():
    model = build_model("deeplabv3", 3, encoder="resnet18", multi_grid=None, atrous_rates=(2, 4, 6))
    assert _dilations(model.aspp.convs[i][0] for i in (1, 2, 3)) == [2, 4, 6]
    pool_bn = model.aspp.convs[-1][2]
    before = pool_bn.running_mean.clone()
    out = _train_step(model, torch.randn(1, 3, 41, 41), 3)
    assert out.shape == (1, 3, 41, 41)
    assert pool_bn.weight.grad is not None and pool_bn.weight.grad.abs().sum() > 0
    torch.testing.assert_close(pool_bn.running_mean, before)  # one value per channel: running stats kept
    _train_step(model, torch.randn(2, 3, 41, 41), 3)
    assert not torch.equal(pool_bn.running_mean, before)  # batch of two: ordinary BN


def test_deeplab_rejects_bad_options():
    with pytest.raises(ValueError, match="multi_grid needs one positive rate per block"):
        build_model("deeplabv3", 3, encoder="resnet18", multi_grid=(1, 2, 4, 8))  # layer4 has 2 blocks
    with pytest.raises(ValueError, match="multi_grid needs one positive rate per block"):
        build_model("deeplabv3", 3, encoder="resnet50", multi_grid=(1, 2))
    with pytest.raises(ValueError, match="atrous_rates"):
        build_model("deeplabv3", 3, encoder="resnet18", multi_grid=None, atrous_rates=())
    with pytest.raises(ValueError, match="output_stride"):
        build_model("deeplabv3plus", 3, encoder="resnet18", multi_grid=None, output_stride=4)


# --- DeepLab v3+ ------------------------------------------------------------------------------------


def test_deeplabv3plus_parameter_count_and_structure():
    # resnet50 trunk + ASPP (524,800 + 3 x 4,719,104 + 524,800 + 328,192) + reduce 1x1 256->48 (+BN)
    # + 3x3 304->256 (+BN) + 3x3 256->256 (+BN) + classifier 256->21
    expected = RESNET50_TRUNK + 15_535_104 + 12_384 + 700_928 + 590_336 + 5_397
    assert _count("deeplabv3plus") == expected
    with torch.device("meta"):
        model = build_model("deeplabv3plus", 21)
    assert model.encoder.strides[-1] == 16
    assert _dilations(model.aspp.convs[i][0] for i in (1, 2, 3)) == [6, 12, 18]
    assert model.reduce[0].in_channels == model.encoder.out_channels[1] == 256
    assert model.reduce[0].out_channels == 48
    assert model.refine[0][0].in_channels == 256 + 48
    assert model.aux_head is None


def test_deeplabv3plus_separable_uses_depthwise_convs():
    with torch.device("meta"):
        model = build_model("deeplabv3plus", 21, separable=True, output_stride=8)
    assert _dilations(model.aspp.convs[i].depthwise for i in (1, 2, 3)) == [12, 24, 36]
    depthwise = model.aspp.convs[1].depthwise
    assert depthwise.groups == depthwise.in_channels == depthwise.out_channels == 2048
    assert model.refine[0].depthwise.groups == 304
    assert _count("deeplabv3plus", separable=True) < _count("deeplabv3plus") - 13_000_000


@pytest.mark.parametrize("separable", [False, True])
def test_deeplabv3plus_shapes_and_gradients(separable):
    model = build_model("deeplabv3plus", 4, encoder="resnet18", separable=separable, aux_head=True)
    assert model.reduce[0].in_channels == 64  # read off encoder.out_channels, not hard-coded
    out = _train_step(model, torch.randn(2, 3, 65, 97), 4)
    assert out["out"].shape == out["aux"].shape == (2, 4, 65, 97)
    assert _without_gradient(model) == []
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 31, 18)).shape == (1, 4, 31, 18)


# --- DeepLab v2 -------------------------------------------------------------------------------------


def test_deeplabv2_aspp_l_sums_four_atrous_classifiers():
    # resnet101 trunk + four 3x3 convs 2048 -> 21 with bias
    assert _count("deeplabv2") == RESNET101_TRUNK + 4 * (2048 * 21 * 9 + 21)
    model = build_model("deeplabv2", 5, encoder="resnet18").eval()
    assert model.encoder.strides[-1] == 8
    assert _dilations(model.classifier.branches) == [6, 12, 18, 24]
    features = torch.randn(1, 512, 9, 11)
    with torch.no_grad():
        expected = sum(branch(features) for branch in model.classifier.branches)
        torch.testing.assert_close(model.classifier(features), expected)
    assert not hasattr(model, "aux_head") or model.aux_head is None
    with torch.device("meta"):
        assert _dilations(build_model("deeplabv2", 5, output_stride=16).classifier.branches) == [3, 6, 9, 12]


def test_deeplabv2_shapes_and_gradients():
    model = build_model("deeplabv2", 4, encoder="resnet18")
    out = _train_step(model, torch.randn(2, 3, 65, 97), 4)
    assert out.shape == (2, 4, 65, 97)
    assert _without_gradient(model) == []


def test_deeplabv2_crf_refines_eval_logits_only():
    crf_module = importlib.import_module("segbench.models.architectures.crf")
    if not hasattr(crf_module, "ConvCRF"):
        pytest.skip("segbench.models.architectures.crf.ConvCRF is not written yet (another helper's file)")
    plain = build_model("deeplabv2", 3, encoder="resnet18")
    with_crf = build_model("deeplabv2", 3, encoder="resnet18", crf=True, crf_iterations=2)
    assert isinstance(with_crf.crf, crf_module.ConvCRF)
    with_crf.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(1, 3, 33, 45)
    with torch.no_grad():
        plain.train(), with_crf.train()
        torch.testing.assert_close(with_crf(x), plain(x))  # the CRF is a test-time step only
        plain.eval(), with_crf.eval()
        refined, raw = with_crf(x), plain(x)
        expected = with_crf.crf(raw, x * 57.6)  # guided by the input back in 8-bit colour units
    assert refined.shape == raw.shape == (1, 3, 33, 45)
    assert not torch.allclose(refined, raw)
    torch.testing.assert_close(refined, expected)
