"""MobileNetV3, EfficientNet and LR-ASPP against the real torchvision modules (peers environment; they skip
elsewhere, naming what is missing): torchvision's ``features`` state dict loads into segbench's encoder with
``strict=True`` and both compute the same stage outputs, dilated as torchvision dilates; torchvision's
``lraspp_mobilenet_v3_large`` converts and computes segbench's ``lraspp`` function, in eval and in training
mode; a swapped layer makes the comparison fail. Random weights, never downloaded; constant tensors
randomised (``tests.numerics.randomise_constants``) so a swap cannot hide behind equal values, then the
BatchNorm statistics set to the activations' own: with random statistics the deep features of a random
MobileNetV3 collapse to a constant in eval mode (at features.16 a spatial spread of 1e-3 of their scale,
against 0.09 with the activations' statistics), which
would hide any difference behind the head's biases."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

from segbench import build_encoder, build_model
from segbench.checkpoints.convert import convert, convert_with_report
from tests.numerics import assert_same_function, calibrate_batch_norm, randomise_constants, set_mode
from tests.peer_libraries import library

MODES = ["eval", "train"]
TORCHVISION_PARAMS = {"mobilenet_v3_large": 5_483_032, "mobilenet_v3_small": 2_542_856, "efficientnet_b0": 5_288_548,
                      "efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994, "efficientnet_b3": 12_233_232}


def _torchvision(name: str, **kwargs):
    models = library("torchvision.models")
    torch.manual_seed(0)
    return calibrate_batch_norm(randomise_constants(getattr(models, name)(weights=None, **kwargs)))


def _stages(features, taps, x):
    outputs = []
    for index, module in enumerate(features):
        x = module(x)
        if index in taps:
            outputs.append(x)
    return outputs


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_parameter_counts_and_keys_equal_torchvisions(name):
    reference = _torchvision(name)
    assert sum(p.numel() for p in reference.parameters()) == TORCHVISION_PARAMS[name]  # what the pins assume
    encoder = build_encoder(name)
    expected = {f"features.{k}": tuple(v.shape) for k, v in reference.features.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in encoder.state_dict().items()} == expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name,output_stride", [("mobilenet_v3_large", 32), ("mobilenet_v3_large", 16),
                                                ("mobilenet_v3_small", 16), ("efficientnet_b0", 32),
                                                ("efficientnet_b3", 32)])
def test_encoder_computes_torchvisions_stages(name, output_stride, mode):
    kwargs = {"dilated": True} if output_stride == 16 else {}
    if name.startswith("efficientnet"):
        kwargs["stochastic_depth_prob"] = 0.0  # torchvision's StochasticDepth is random in training
    reference = _torchvision(name, **kwargs)
    options = {"drop_path_rate": 0.0} if name.startswith("efficientnet") else {}
    encoder = build_encoder(name, output_stride=output_stride, **options)
    state = {f"features.{k}": v for k, v in reference.features.state_dict().items()}
    encoder.load_state_dict(encoder.adapt_state_dict(state), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = _stages(set_mode(reference.features, mode), encoder.taps, x)
        got = set_mode(encoder, mode)(x)
    assert [tuple(g.shape) for g in got] == [tuple(e.shape) for e in expected]
    for g, e in zip(got, expected):
        assert_same_function(g, e)


def _torchvision_lraspp():
    segmentation = library("torchvision.models.segmentation")
    torch.manual_seed(0)
    return calibrate_batch_norm(randomise_constants(segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                                  num_classes=5)))


@pytest.mark.parametrize("mode", MODES)
def test_lraspp_computes_torchvisions_function(mode):
    reference = _torchvision_lraspp()
    assert sum(p.numel() for p in reference.parameters()) == 3_221_538 - 16 * (40 + 1) - 16 * (128 + 1)  # 21 -> 5 classes: two 1x1 heads
    converted, report = convert_with_report(reference.state_dict(), "torchvision", "lraspp", num_classes=5)
    assert report.ok, str(report)
    model = build_model("lraspp", 5)
    model.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, 72, 56)
    with torch.no_grad():
        assert_same_function(set_mode(model, mode)(x), set_mode(reference, mode)(x)["out"])


@pytest.mark.parametrize("bug", ["two BatchNorms of a block swapped", "two blocks of the last stage swapped",
                                 "the head's gate and its reduction swapped"])
def test_the_lraspp_comparison_fails_on_a_broken_conversion(bug):
    reference = _torchvision_lraspp()
    converted = convert(reference.state_dict(), "torchvision", "lraspp", num_classes=5)
    if bug == "two BatchNorms of a block swapped":  # block 5's expansion and depthwise BNs, both 120 wide
        pairs = [(f"encoder.features.5.block.0.1.{k}", f"encoder.features.5.block.1.1.{k}")
                 for k in ("weight", "bias", "running_mean", "running_var")]
    elif bug == "two blocks of the last stage swapped":  # features.14 and .15: the same shapes, key for key
        pairs = [(k, k.replace("features.14.", "features.15.")) for k in converted if k.startswith("encoder.features.14.")]
    else:  # two 960 -> 128 1x1 convs: the conv-BN-ReLU branch and the pooled sigmoid gate
        pairs = [("cbr.0.weight", "scale.1.weight")]
    for a, b in pairs:
        converted[a], converted[b] = converted[b], converted[a]
    model = build_model("lraspp", 5)
    model.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), pytest.raises(AssertionError):
        assert_same_function(model.eval()(x), reference.eval()(x)["out"])


# ImageNet weights by name (``pretrained="imagenet"``, offline): torchvision's own model with random weights,
# saved whole (``features`` and its ImageNet classifier, as its IMAGENET1K_V1 file holds them) where the row's
# file goes in the cache, the row's digest set to this file's prefix; segbench's encoder then computes
# torchvision's feature maps at its taps (LR-ASPP: dilated as torchvision's ``dilated=True``).
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name,arch,options", [
    ("mobilenet_v3_large", "lraspp", {}),
    ("mobilenet_v3_small", "pspnet", {"encoder": "mobilenet_v3_small", "output_stride": 32}),
    ("efficientnet_b0", "pspnet", {"encoder": "efficientnet_b0", "output_stride": 32}),
])
def test_imagenet_by_name_gives_torchvisions_feature_maps(name, arch, options, mode, tmp_path, monkeypatch):
    from segbench import build_pretrained_model
    from segbench.checkpoints import imagenet

    kwargs = {"dilated": True} if arch == "lraspp" else {}
    if name.startswith("efficientnet"):
        kwargs["stochastic_depth_prob"] = 0.0  # torchvision's StochasticDepth is random in training
    reference = _torchvision(name, **kwargs)
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("SEGBENCH_OFFLINE", "1")
    row = imagenet.IMAGENET_WEIGHTS[name]
    path = imagenet.cache_dir() / row.filename
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(imagenet.IMAGENET_WEIGHTS, name, dataclasses.replace(row, sha256=digest[:8]))
    model = build_pretrained_model(arch, 3, pretrained="imagenet", **options)
    report = model.pretrained_report
    assert report.sha256 == digest and report.skipped and all(k.startswith("classifier.") for k in report.skipped)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = _stages(set_mode(reference.features, mode), model.encoder.taps, x)
        got = set_mode(model.encoder, mode)(x)
    assert [tuple(g.shape) for g in got] == [tuple(e.shape) for e in expected]
    for g, e in zip(got, expected):
        assert_same_function(g, e)
