"""Peers of segbench's architectures in `segbench speed` (``segbench.bench.measure.peers``): every row says a
ratio, "different configuration" with both parameter counts, or "no peer" and why; a torchvision peer that
gets a ratio computes segbench's very function. The peers need the peers environment (`make peers`);
without torchvision only the message that says how to get it is checked."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from click.testing import CliRunner

from segbench import build_model
from segbench.bench.measure.peers import build_peer
from tests.numerics import assert_same_function, calibrate_batch_norm, randomise_constants, set_mode
from tests.peer_libraries import imports, library

ACCEPTANCE_ARCHS = ["fcn", "deeplabv3", "deeplabv3plus", "pspnet", "unet", "segformer", "upernet"]
# What each row says in the peers environment at the quick profile's configurations, and why.
EXPECTED = {
    "fcn": "ratio", "deeplabv3": "ratio", "segformer": "ratio", "upernet": "ratio",
    "pspnet": "ratio",  # smp's PSPNet with the paper's head rebuilt from its modules, an FCNHead as aux head
    "deeplabv3plus": "ratio",  # smp's DeepLabV3Plus with the paper's decoder rebuilt from its modules
    "unet": "no peer",  # the paper's U-Net; smp's decodes a classification encoder
}


PEER_LIBRARIES = ("torchvision", "segmentation_models_pytorch", "transformers")


@pytest.fixture
def peers_env():
    for name in PEER_LIBRARIES:
        library(name)


def test_every_row_has_a_ratio_a_different_configuration_or_no_peer(tmp_path, peers_env):
    from segbench.cli import main

    out = tmp_path / "speed.json"
    args = ["speed", "--archs", ",".join(ACCEPTANCE_ARCHS), "--profile", "quick", "--size", "64", "64", "--batch", "2",
            "--rounds", "1", "--max-warmup", "0", "--threads", "1", "--classes", "4", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    figures = json.loads(out.read_text())["archs"]
    for arch in ACCEPTANCE_ARCHS:
        row = next(line for line in lines if re.match(rf"{arch}\s+segbench\s", line))
        impls = figures[arch]["impls"]
        if EXPECTED[arch] == "ratio":
            assert re.search(r"train \d+\.\d\d( \[[\d.]+-[\d.]+\])?, infer \d+\.\d\d( \[[\d.]+-[\d.]+\])?$", row), row
            assert figures[arch]["ratio"]["train"] > 0
        elif EXPECTED[arch] == "different configuration":
            assert row.endswith("different configuration") and "ratio" not in figures[arch]
            ours, peer = (impls[k]["params"] - impls[k].get("params_unused", 0) for k in ("segbench", "peer"))
            assert ours != peer and f"{arch}: different configuration: segbench {ours:,} parameters" in result.output
            assert f"{peer:,}; no ratio" in result.output
            peer_row = next(line for line in lines if line.startswith(arch) and figures[arch]["peer_name"] in line)
            assert f" {peer:,} " in peer_row and f" {ours:,} " in row  # both counts in the rows
        else:
            assert row.endswith("no peer") and "peer" not in impls and f"{arch}: no peer: " in result.output


def _assert_same_function_in(mode: str, model, peer_model) -> None:
    """segbench's model and the peer give the same output (and auxiliary output in training) on one input."""
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        got, expected = set_mode(model, mode)(x), set_mode(peer_model, mode)(x)
    if mode == "eval":
        assert_same_function(got, expected)
    else:
        assert_same_function(got["out"], expected["out"])
        assert_same_function(got["aux"], expected["aux"])


# The quick profile's slim configurations (ResNet-18; output stride 16 with multi-grid for DeepLab v3), with
# the auxiliary head, on one input channel: torchvision's ResNet-18 refuses dilation and has no multi-grid,
# so the peer gets segbench's strides and dilations conv by conv; this checks it computes segbench's function.
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("arch,options", [
    ("fcn", {"encoder": "resnet18", "output_stride": 8, "aux_head": True}),
    ("deeplabv3", {"encoder": "resnet18", "output_stride": 16, "multi_grid": [1, 2], "aux_head": True}),
])
def test_torchvision_peer_computes_segbenchs_function(arch, options, mode, peers_env):
    from segbench.checkpoints.convert import convert

    model = build_model(arch, 4, in_channels=1, **options)
    peer, why = build_peer(arch, model, num_classes=4, in_channels=1)
    assert peer is not None, why
    randomise_constants(peer.model)
    with warnings.catch_warnings():  # "torchvision's deeplabv3 has no multi-grid": here the peer has ours
        warnings.simplefilter("ignore")
        model.load_state_dict(convert(peer.model.net.state_dict(), "torchvision", arch, num_classes=4, in_channels=1,
                                      **options), strict=True)
    _assert_same_function_in(mode, model, peer.model)


# smp's PSPNet and DeepLabV3Plus differ from the papers' heads (smp: a 1x1 bottleneck and a 3x3 classifier; a
# separable conv after the ASPP and one separable refining conv); the peer rebuilds the papers' heads from smp's
# modules. At the papers' configurations (ResNet-50) both count what segbench's models count.
@pytest.mark.parametrize("arch,params", [("pspnet", 48_957_802), ("deeplabv3plus", 40_352_181)])
def test_smp_peer_counts_segbenchs_parameters_at_the_papers_configuration(arch, params, peers_env):
    model = build_model(arch, 21)
    peer, why = build_peer(arch, model, num_classes=21, in_channels=3)
    assert peer is not None, why
    assert sum(p.numel() for p in model.parameters()) == params
    assert sum(p.numel() for p in peer.model.parameters()) == params


def _smp_state_as_segbenchs(arch: str, state: dict, bins: int) -> dict:
    """The smp peer's weights under segbench's names (``net.`` dropped; the heads renamed). smp's pyramid
    concatenates the bins before the feature, ours after: the bottleneck's input channels are rotated."""
    rules = {
        "pspnet": [(r"decoder\.psp\.blocks\.(\d)\.pool\.1\.0\.", r"ppm.stages.\1.1."),
                   (r"decoder\.psp\.blocks\.(\d)\.pool\.1\.1\.", r"ppm.stages.\1.2."),
                   (r"decoder\.conv\.", "bottleneck."), (r"segmentation_head\.0\.", "classifier.")],
        "deeplabv3plus": [(r"decoder\.aspp\.", "aspp."), (r"decoder\.block1\.", "reduce."),
                          (r"decoder\.block2\.", "refine."), (r"segmentation_head\.0\.", "classifier.")],
    }[arch]
    out = {}
    for key, value in state.items():
        key = key.removeprefix("net.")
        for pattern, replacement in rules:
            key = re.sub("^" + pattern, replacement, key)
        out[key] = value
    if arch == "pspnet":
        weight = out["bottleneck.0.weight"]
        pooled = weight.shape[1] // 2  # the bins carry as many channels as the feature
        out["bottleneck.0.weight"] = torch.cat([weight[:, pooled:], weight[:, :pooled]], dim=1)
    return out


def _bilinear_without_aligned_corners(monkeypatch):
    """smp upsamples with align_corners=True, segbench with False (the same work, another sampling): the
    equivalence is checked with both sampling as segbench does."""
    interpolate = torch.nn.functional.interpolate

    def interpolate_unaligned(input, size=None, scale_factor=None, mode="nearest", align_corners=None, *args, **kwargs):
        return interpolate(input, size, scale_factor, mode, False if align_corners else align_corners, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "interpolate", interpolate_unaligned)


# The quick profile's slim configurations on one input channel (the peer sets smp's dilations to segbench's,
# multi-grid included), with the auxiliary head: smp's network with the weights copied computes segbench's
# function, in eval and training mode.
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("arch,options", [
    ("pspnet", {"encoder": "resnet18", "output_stride": 8}),
    ("deeplabv3plus", {"encoder": "resnet18", "output_stride": 16, "multi_grid": [1, 2], "aux_head": True}),
])
def test_smp_peer_computes_segbenchs_function(arch, options, mode, peers_env, monkeypatch):
    model = build_model(arch, 4, in_channels=1, **options)
    peer, why = build_peer(arch, model, num_classes=4, in_channels=1)
    assert peer is not None, why
    randomise_constants(peer.model)
    model.load_state_dict(_smp_state_as_segbenchs(arch, peer.model.state_dict(), 4), strict=True)
    _bilinear_without_aligned_corners(monkeypatch)
    _assert_same_function_in(mode, model, peer.model)


# LR-ASPP: torchvision's LRASPP on its own MobileNetV3, at torchvision's configuration and on the smaller
# variant with one input channel and the stage-end taps.
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("options,in_channels", [({}, 3), ({"encoder": "mobilenet_v3_small", "feature_taps": "last"}, 1)])
def test_torchvision_lraspp_peer_computes_segbenchs_function(options, in_channels, mode, peers_env):
    from segbench.checkpoints.convert import convert

    model = build_model("lraspp", 4, in_channels=in_channels, **options)
    peer, why = build_peer("lraspp", model, num_classes=4, in_channels=in_channels)
    assert peer is not None, why
    assert sum(p.numel() for p in peer.model.parameters()) == sum(p.numel() for p in model.parameters())
    calibrate_batch_norm(randomise_constants(peer.model), in_channels)  # the deep features alive in eval mode
    model.load_state_dict(convert(peer.model.net.state_dict(), "torchvision", "lraspp", num_classes=4,
                                  in_channels=in_channels, **options), strict=True)
    x = torch.randn(2, in_channels, 64, 64)
    with torch.no_grad():
        assert_same_function(set_mode(model, mode)(x), set_mode(peer.model, mode)(x))


# torchvision's FCN/DeepLabV3 and transformers' UperNet compute their auxiliary head in eval mode too; the
# peer's inference leaves it out, as ours does, and gives the library's own main output.
@pytest.mark.parametrize("arch,options,aux_name", [
    ("fcn", {"encoder": "resnet18", "aux_head": True}, "aux_classifier"),
    ("deeplabv3", {"encoder": "resnet18", "aux_head": True}, "aux_classifier"),
    ("upernet", {"embed_dim": 8, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 2, 4), "channels": 16,
                 "aux_channels": 8, "drop_path_rate": 0.0}, "auxiliary_head"),
])
def test_peer_inference_leaves_the_auxiliary_head_out(arch, options, aux_name, peers_env):
    peer, why = build_peer(arch, build_model(arch, 4, **options), num_classes=4, in_channels=3)
    assert peer is not None, why
    net = peer.model.net
    calls = []
    getattr(net, aux_name).register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = peer.model.eval()(x)
        assert not calls
        own = net(x)["out"] if arch != "upernet" else net(pixel_values=x).logits  # the library's forward
        assert calls  # which does run it
        assert_same_function(got, own)
        calls.clear()
        peer.model.train()
        if peer.own_loss:
            peer.model.training_loss(x, torch.zeros(2, 64, 64, dtype=torch.long))
        else:
            peer.model(x)
        assert calls  # training keeps it


@pytest.mark.skipif(imports("torchvision"), reason="torchvision imports here: the message is for where it does not")
def test_without_torchvision_the_row_says_how_to_get_it():
    model = build_model("fcn", 4, encoder="resnet18")
    peer, why = build_peer("fcn", model, num_classes=4, in_channels=3)
    assert peer is None and "needs torchvision" in why and "make peers" in why


def test_architectures_without_a_peer_say_why():
    for arch, options in (("unet", {"base_width": 8}), ("segnet", {"base_width": 8}), ("deeplabv2", {"encoder": "resnet18"})):
        peer, why = build_peer(arch, build_model(arch, 4, **options), num_classes=4, in_channels=3)
        assert peer is None and why.startswith("no peer: ") and len(why) > len("no peer: ") + 10
