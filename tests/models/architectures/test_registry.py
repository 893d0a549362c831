"""Every registered architecture, tested the moment it is registered: logits at input resolution for an
odd size, auxiliary outputs in training, a gradient for every parameter, and clear errors."""

import pytest
import torch

import segbench
from segbench.models.registry import ARCHITECTURES, ENCODERS
from tests.small_configs import small_options

ARCHS = segbench.list_models()


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_logits_at_input_resolution(arch):
    model = segbench.build_model(arch, num_classes=3, in_channels=2, **small_options(arch)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 2, 67, 93))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 3, 67, 93)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_every_parameter_gets_a_gradient(arch):
    model = segbench.build_model(arch, num_classes=3, in_channels=2, **small_options(arch)).train()
    out = model(torch.randn(2, 2, 64, 64))
    if isinstance(out, dict):
        assert set(out) == {"out", "aux"}
        assert out["aux"].shape == (2, 3, 64, 64)
        assert model.aux_weight > 0
        loss = out["out"].square().mean() + model.aux_weight * out["aux"].square().mean()
        out = out["out"]
    else:
        loss = out.square().mean()
    assert out.shape == (2, 3, 64, 64)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"parameters without gradient: {missing[:10]}"


@pytest.mark.parametrize("arch", ARCHS)
def test_model_contract(arch):
    model = segbench.build_model(arch, num_classes=3, **small_options(arch))
    assert hasattr(model, "encoder")
    enc = model.encoder
    assert len(enc.out_channels) == len(enc.strides)
    assert any(name.endswith("classifier") for name, _ in model.named_modules())
    entry = ARCHITECTURES[arch]
    assert entry.year >= 2014 and entry.paper and entry.summary and entry.strengths and entry.weaknesses


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(KeyError) as err:
        segbench.build_model("unett", num_classes=2)
    msg = str(err.value)
    assert "did you mean 'unet'" in msg.lower()
    for name in ARCHS:
        assert name in msg


def test_unknown_option_names_valid_ones():
    with pytest.raises(TypeError) as err:
        segbench.build_model("unet", num_classes=2, base_widht=8)
    msg = str(err.value)
    assert "base_widht" in msg and "did you mean 'base_width'" in msg and "padding" in msg


def test_one_build_model_and_pretrained_weights_by_their_own_name():
    from segbench.checkpoints import build_pretrained_model
    from segbench.models.registry import build_model

    assert segbench.build_model is build_model and segbench.build_pretrained_model is build_pretrained_model
    with pytest.raises(TypeError, match=r"segbench.build_pretrained_model\('unet', ..., pretrained=...\)"):
        segbench.build_model("unet", num_classes=2, pretrained="imagenet")
    model = segbench.build_pretrained_model("unet", 2, base_width=4)  # pretrained=None: what build_model builds
    assert model.pretrained_report is None and model.arch_name == "unet"
    torch.manual_seed(0)
    fresh = segbench.build_model("unet", 2, base_width=4)
    torch.manual_seed(0)
    same = segbench.build_pretrained_model("unet", 2, base_width=4)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), same.state_dict().values()))


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(KeyError) as err:
        segbench.build_encoder("resnet99")
    for name in ENCODERS:
        assert name in str(err.value)


def test_bad_num_classes():
    with pytest.raises(ValueError):
        segbench.build_model("unet", num_classes=0)
