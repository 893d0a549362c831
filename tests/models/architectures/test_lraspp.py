"""LR-ASPP: torchvision's parameter count, its head computed as torchvision's ``LRASPPHead`` does (written
out below from its source, on the stride-8 block torchvision reads), the torchvision converter, options.
The comparison with the real torchvision module is in tests/checkpoints/test_convert_mobile_peers.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import segbench
from segbench.checkpoints.convert import convert_with_report
from tests.numerics import assert_same_function, calibrate_batch_norm, randomise_constants


def test_parameter_count_equals_torchvision_s():
    with torch.device("meta"):
        model = segbench.build_model("lraspp", 21)
    assert sum(p.numel() for p in model.parameters()) == 3_221_538  # lraspp_mobilenet_v3_large's num_params
    assert model.encoder.strides == (2, 4, 8, 16, 16) and model.encoder.taps == (0, 2, 4, 7, 16)


def _torchvision_lraspp_forward(model, x):
    """torchvision's ``LRASPP.forward`` with ``IntermediateLayerGetter(features, {"4": "low", "16": "high"})``,
    from its source, on the segbench model's own modules and tensors."""
    feats, low = x, None
    for index, module in enumerate(model.encoder.features):
        feats = module(feats)
        if index == 4:
            low = feats
    high, p = feats, dict(model.named_parameters()) | dict(model.named_buffers())
    y = F.conv2d(high, p["cbr.0.weight"])
    y = F.relu(F.batch_norm(y, p["cbr.1.running_mean"], p["cbr.1.running_var"], p["cbr.1.weight"], p["cbr.1.bias"]))
    s = torch.sigmoid(F.conv2d(F.adaptive_avg_pool2d(high, 1), p["scale.1.weight"]))
    y = F.interpolate(y * s, size=low.shape[-2:], mode="bilinear", align_corners=False)
    out = F.conv2d(low, p["low_classifier.weight"], p["low_classifier.bias"]) + F.conv2d(
        y, p["high_classifier.weight"], p["high_classifier.bias"])
    return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


def test_forward_is_torchvision_s_head_on_the_first_stride_8_block():
    torch.manual_seed(0)
    model = calibrate_batch_norm(randomise_constants(segbench.build_model("lraspp", 5))).eval()
    x = torch.randn(1, 3, 61, 83)
    with torch.no_grad():
        assert_same_function(model(x), _torchvision_lraspp_forward(model, x))
        # The check sees the tap: the end of the stride-8 stage (block 6) is another function.
        other = segbench.build_model("lraspp", 5, feature_taps="last").eval()
        other.load_state_dict(model.state_dict())
        with pytest.raises(AssertionError):
            assert_same_function(other(x), _torchvision_lraspp_forward(model, x))
        # ... and the head's two 960 -> 128 convs: the conv-BN-ReLU branch and the sigmoid gate.
        swapped = segbench.build_model("lraspp", 5).eval()
        state = model.state_dict()
        state["cbr.0.weight"], state["scale.1.weight"] = state["scale.1.weight"], state["cbr.0.weight"]
        swapped.load_state_dict(state)
        with pytest.raises(AssertionError):
            assert_same_function(swapped(x), _torchvision_lraspp_forward(model, x))


def _torchvision_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """segbench's lraspp keys written as torchvision's ``lraspp_mobilenet_v3_large`` names them."""
    return {(f"backbone.{k[len('encoder.features.'):]}" if k.startswith("encoder.") else f"classifier.{k}"): v
            for k, v in state.items()}


def test_converter_from_torchvision_keys_and_class_change():
    torch.manual_seed(0)
    source = randomise_constants(segbench.build_model("lraspp", 21)).eval()
    foreign = _torchvision_keys(source.state_dict())
    assert "backbone.16.0.weight" in foreign and "classifier.cbr.1.running_var" in foreign
    converted, report = convert_with_report(foreign, "torchvision", "lraspp", num_classes=21)
    assert report.ok, str(report)
    model = segbench.build_model("lraspp", 21)
    model.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), source(x))
    # other classes: everything but the two classifiers
    converted, report = convert_with_report(foreign, "torchvision", "lraspp", num_classes=3)
    assert sorted(report.missing) == ["high_classifier.bias", "high_classifier.weight", "low_classifier.bias",
                                      "low_classifier.weight"] and not report.unexpected and not report.mismatched


def test_converter_takes_a_bare_imagenet_backbone_file():
    encoder = segbench.build_encoder("mobilenet_v3_large")
    imagenet = {f"features.{k}": v for k, v in encoder.features.state_dict().items()}
    imagenet |= {"classifier.0.weight": torch.zeros(1280, 960), "classifier.3.weight": torch.zeros(1000, 1280)}
    converted, report = convert_with_report(imagenet, "torchvision", "lraspp", num_classes=2, in_channels=1)
    assert not report.unexpected and not report.mismatched
    assert all(k.startswith(("cbr.", "scale.", "low_classifier.", "high_classifier.")) for k in report.missing)
    assert converted["encoder.features.0.0.weight"].shape == (16, 1, 3, 3)


def test_options():
    model = segbench.build_model("lraspp", 3, encoder="efficientnet_b0").eval()
    assert model.low_level == 2 and model.low_classifier.in_channels == 40
    assert segbench.build_model("lraspp", 3, encoder="resnet18", output_stride=8).low_level == 2
    with pytest.raises(ValueError, match="feature_taps applies to MobileNetV3 encoders only"):
        segbench.build_model("lraspp", 3, encoder="resnet18", feature_taps="first")
    with pytest.raises(ValueError, match="encoder must take output_stride"):
        segbench.build_model("lraspp", 3, encoder="swin_t")
