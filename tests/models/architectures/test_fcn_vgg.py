"""The paper's VGG16 FCN-32s/16s/8s (``fcn_vgg.py``): the reference nets' parameter counts, layers and crop
alignment, any input size."""

import pytest
import torch

import segbench
from segbench.models.architectures import fcn_vgg
from segbench.models.blocks import bilinear_kernel

ARCHS = ["fcn32s", "fcn16s", "fcn8s"]


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def small(arch, **options):
    return segbench.build_model(arch, num_classes=3, base_width=4, **options)


def test_fcn8s_has_134m_parameters():
    with torch.device("meta"):
        models = {arch: segbench.build_model(arch, num_classes=21) for arch in ARCHS}
    # VGG16 convs 14,714,688 + fc6 102,764,544 + fc7 16,781,312 + score_fr 86,037, then:
    assert count(models["fcn8s"]) == 134_489_759  # + score_pool4/3 10,773 + 5,397, 2x/2x/8x 7,056 + 7,056 + 112,896
    assert abs(count(models["fcn8s"]) - 134e6) / 134e6 < 0.01
    assert count(models["fcn16s"]) == 134_815_994  # + score_pool4 10,773, 2x 7,056, 16x 451,584
    assert count(models["fcn32s"]) == 136_152_917  # + 32x upsampling 21 x 21 x 64 x 64 = 1,806,336


def test_reference_layers():
    model = segbench.build_model("fcn8s", num_classes=5, base_width=4)
    assert model.encoder.variant == "fcn" and model.encoder.features[0].padding == (100, 100)
    layers = {name: (m.kernel_size, m.stride) for name, m in model.named_children() if name != "encoder"}
    assert layers == {
        "classifier": ((1, 1), (1, 1)),
        "score_pool4": ((1, 1), (1, 1)),
        "upscore2": ((4, 4), (2, 2)),
        "score_pool3": ((1, 1), (1, 1)),
        "upscore_pool4": ((4, 4), (2, 2)),
        "upscore8": ((16, 16), (8, 8)),
    }
    assert model.upscore8.bias is None and torch.equal(model.upscore8.weight, bilinear_kernel(5, 16))
    for name in ("classifier", "score_pool4", "score_pool3"):  # zero-initialised, as the reference nets
        assert not getattr(model, name).weight.any()
    assert segbench.build_model("fcn32s", num_classes=5, base_width=4).upscore.kernel_size == (64, 64)
    assert segbench.build_model("fcn16s", num_classes=5, base_width=4).upscore16.kernel_size == (32, 32)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", [(97, 131), (1, 1), (30, 7)])
def test_any_input_size(arch, size):
    model = small(arch, in_channels=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, *size)).shape == (1, 3, *size)


def test_full_size_fcn8s_runs():
    model = segbench.build_model("fcn8s", num_classes=21).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 19, 23)).shape == (1, 21, 19, 23)


def _symmetrise(model):
    """Make every filter left-right symmetric and the score layers non-zero."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                if m.weight.shape[-1] == 1:
                    m.weight.normal_(std=0.5)
                m.weight.copy_((m.weight + m.weight.flip(-1)) / 2)
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_crops_align_maps_with_the_input(arch):
    # With left-right symmetric filters, the net commutes with flipping the image exactly when each crop
    # takes its window from the centre of the larger map. For widths of 32k - 198 (here 58) every pooling
    # is exact and the reference offsets 5/9 and 19/27/31 are those centres; a wrong offset breaks this.
    model = _symmetrise(small(arch)).eval()
    x = torch.randn(1, 3, 37, 58)
    with torch.no_grad():
        out = model(x)
        flipped = model(x.flip(-1))
    assert out.abs().max() > 0
    torch.testing.assert_close(flipped, out.flip(-1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "constant,value", [("FINAL_OFFSET", {32: 18, 16: 26, 8: 30}), ("POOL4_OFFSET", 4), ("POOL3_OFFSET", 8)]
)
def test_crop_alignment_test_detects_wrong_offsets(monkeypatch, constant, value):
    arch = "fcn8s"
    monkeypatch.setattr(fcn_vgg, constant, value)
    model = _symmetrise(small(arch)).eval()
    x = torch.randn(1, 3, 37, 58)
    with torch.no_grad():
        assert not torch.allclose(model(x.flip(-1)), model(x).flip(-1), rtol=1e-4, atol=1e-5)


def test_skip_scaling_is_a_fixed_factor_on_pool4_and_pool3():
    scaled = small("fcn8s", zero_init_scores=False).eval()
    plain = small("fcn8s", zero_init_scores=False, scale_skips=False).eval()
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        plain.score_pool4.weight.mul_(0.01)
        plain.score_pool3.weight.mul_(0.0001)
        x = torch.randn(1, 3, 40, 45)
        torch.testing.assert_close(plain(x), scaled(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_parameter_gets_a_gradient(arch):
    model = small(arch, zero_init_scores=False).train()
    model(torch.randn(2, 3, 21, 26)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_fixed_upsampling_and_zero_init():
    model = small("fcn8s", learnable_upsampling=False).train()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"upscore2.weight", "upscore_pool4.weight", "upscore8.weight"}
    target = torch.zeros(1, 21, 26, dtype=torch.long)
    torch.nn.functional.cross_entropy(model(torch.randn(1, 3, 21, 26)), target).backward()
    # Zero-initialised score layers learn on the first step; the trunk behind them only afterwards.
    assert model.classifier.weight.grad.abs().sum() > 0
    assert not model.encoder.fc7.weight.grad.any()


def test_vgg16_bn_trunk_and_errors():
    model = small("fcn16s", encoder="vgg16_bn").eval()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.encoder.modules())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 35)).shape == (1, 3, 33, 35)
    with pytest.raises(ValueError, match="vgg16"):
        segbench.build_model("fcn8s", num_classes=3, encoder="resnet50")
    with pytest.raises(ValueError, match="variant='fcn'"):
        fcn_vgg.FCNVGG(segbench.build_encoder("vgg16", base_width=4), num_classes=3)
