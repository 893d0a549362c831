"""segbench's converters against the real modules: torchvision's FCN, DeepLab v3, ResNet and VGG, timm's
ResNet and Swin, and the two Mix Transformers that exist as code (segmentation_models_pytorch's copy of
NVlabs' ``mix_transformer.py``; timm has no MiT) plus Hugging Face's whole SegFormer. Each is built with
random weights (never downloaded), its constant-initialised tensors (norm weights and biases, BatchNorm
statistics, zero biases) made random so a converter that swaps two of them changes the output, its state
dict converted by segbench, loaded into segbench's model, and both run on the same small input in eval
mode and in training mode (BatchNorm on batch statistics; dropout and stochastic depth off in both, the
one randomness that would make two equal functions differ).

The other converter tests write the foreign state dicts from the publishers' documented layouts; these
need the libraries themselves, so they run in the peers environment (`make peers`, and CI after
`make test`) and skip elsewhere, naming what is missing (``tests/peer_libraries.py``).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segbench import build_model
from segbench.checkpoints.convert import convert, convert_with_report
from tests.numerics import assert_same_function, randomise_constants, set_mode
from tests.peer_libraries import library as _library

MODES = ["eval", "train"]


def _run(module: nn.Module, mode: str, x: torch.Tensor):
    set_mode(module, mode)
    with torch.no_grad():
        return module(x)


def _load_encoder(model: nn.Module, converted: dict[str, torch.Tensor]) -> nn.Module:
    """Load the ``encoder.*`` part of a converted dict into ``model.encoder``, requiring every encoder key."""
    model.encoder.load_state_dict({k[len("encoder."):]: v for k, v in converted.items() if k.startswith("encoder.")},
                                  strict=True)
    return model.encoder


# ---------------------------------------------------------------- torchvision: whole segmentation models


def _torchvision_segmentation(arch: str):
    tv_segmentation = _library("torchvision.models.segmentation")
    builder = {"fcn": tv_segmentation.fcn_resnet50, "deeplabv3": tv_segmentation.deeplabv3_resnet50}[arch]
    torch.manual_seed(0)
    return randomise_constants(builder(weights=None, weights_backbone=None, num_classes=5, aux_loss=True))


# torchvision trains DeepLab v3 without multi-grid; segbench's default has it.
TORCHVISION_OPTIONS = {"fcn": {"encoder": "resnet50", "aux_head": True},
                       "deeplabv3": {"encoder": "resnet50", "aux_head": True, "multi_grid": None}}


def _converted_torchvision_model(arch: str, reference: nn.Module) -> nn.Module:
    converted, report = convert_with_report(reference.state_dict(), "torchvision", arch, num_classes=5,
                                            **TORCHVISION_OPTIONS[arch])
    assert report.ok, str(report)
    model = build_model(arch, 5, **TORCHVISION_OPTIONS[arch])
    model.load_state_dict(converted, strict=True)
    return model


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ["fcn", "deeplabv3"])
def test_torchvision_segmentation_model_computes_the_same_function(arch, mode):
    reference = _torchvision_segmentation(arch)
    model = _converted_torchvision_model(arch, reference)
    x = torch.randn(2, 3, 64, 64)
    expected, got = _run(reference, mode, x), _run(model, mode, x)
    if mode == "eval":
        assert_same_function(got, expected["out"])
    else:  # segbench returns the auxiliary head's logits in training mode, as torchvision's "aux"
        assert_same_function(got["out"], expected["out"])
        assert_same_function(got["aux"], expected["aux"])


@pytest.mark.parametrize("bug", ["two BatchNorms of a block swapped", "two ASPP branches swapped"])
def test_the_comparison_fails_on_a_broken_conversion(bug):
    reference = _torchvision_segmentation("deeplabv3")
    converted = convert(reference.state_dict(), "torchvision", "deeplabv3", num_classes=5,
                        **TORCHVISION_OPTIONS["deeplabv3"])
    if bug == "two BatchNorms of a block swapped":
        pairs = [(f"encoder.layer1.0.bn1.{k}", f"encoder.layer1.0.bn2.{k}") for k in ("weight", "bias", "running_mean",
                                                                                   "running_var")]
    else:  # same shapes, different dilation rates
        pairs = [(f"aspp.convs.1.{k}", f"aspp.convs.2.{k}") for k in ("0.weight", "1.weight", "1.bias")]
    for a, b in pairs:
        converted[a], converted[b] = converted[b], converted[a]
    model = build_model("deeplabv3", 5, **TORCHVISION_OPTIONS["deeplabv3"])
    model.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(AssertionError):
        assert_same_function(_run(model, "eval", x), _run(reference, "eval", x)["out"])


# ---------------------------------------------------------------- ResNet backbones: torchvision and timm


def _torchvision_resnet_stages(depth: int, output_stride: int):
    models = _library("torchvision.models")
    from torchvision.models._utils import IntermediateLayerGetter

    dilation = {32: None, 8: [False, True, True]}[output_stride]
    torch.manual_seed(0)
    net = randomise_constants(getattr(models, f"resnet{depth}")(weights=None, replace_stride_with_dilation=dilation))
    stages = IntermediateLayerGetter(net, {"relu": "stem", **{f"layer{i}": f"layer{i}" for i in range(1, 5)}})
    return net.state_dict(), lambda x: list(stages(x).values()), stages


def _timm_resnet_stages(depth: int, output_stride: int):
    timm = _library("timm")
    torch.manual_seed(0)
    net = randomise_constants(timm.create_model(f"resnet{depth}", pretrained=False, output_stride=output_stride))
    return net.state_dict(), lambda x: net.forward_intermediates(x, intermediates_only=True), net


# torchvision's BasicBlock refuses dilation, so its ResNet-18 is compared at output stride 32 only.
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("source,depth,output_stride", [("torchvision", 18, 32), ("torchvision", 50, 8),
                                                        ("timm", 18, 8), ("timm", 50, 32)])
def test_resnet_backbone_computes_the_same_stages(source, depth, output_stride, mode):
    state, stages, reference = {"torchvision": _torchvision_resnet_stages, "timm": _timm_resnet_stages}[source](
        depth, output_stride)
    options = {"encoder": f"resnet{depth}", "output_stride": output_stride}
    encoder = _load_encoder(build_model("fcn", 5, **options), convert(state, source, "fcn", **options))
    x = torch.randn(2, 3, 64, 64)
    set_mode(reference, mode)
    with torch.no_grad():
        expected = stages(x)
    got = _run(encoder, mode, x)
    assert len(got) == len(expected) == 5
    for ours, theirs in zip(got, expected):
        assert_same_function(ours, theirs)


# ---------------------------------------------------------------- torchvision VGG16 and VGG16-BN


def _torchvision_vgg(batch_norm: bool) -> nn.Module:
    models = _library("torchvision.models")
    torch.manual_seed(0)
    return randomise_constants((models.vgg16_bn if batch_norm else models.vgg16)(weights=None))


def _pool_outputs(features: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    outputs = []
    for layer in features:
        x = layer(x)
        if isinstance(layer, nn.MaxPool2d):
            outputs.append(x)
    return outputs


@pytest.mark.parametrize("mode", MODES)
def test_vgg16_bn_gives_segnets_encoder_the_same_stages(mode):
    reference = _torchvision_vgg(batch_norm=True)
    encoder = _load_encoder(build_model("segnet", 5), convert(reference.state_dict(), "torchvision", "segnet"))
    x = torch.randn(2, 3, 64, 64)  # even at every pooling: SegNet's ceil and torchvision's floor agree
    set_mode(reference, mode)
    with torch.no_grad():
        expected = _pool_outputs(reference.features, x)
    for ours, theirs in zip(_run(encoder, mode, x), expected, strict=True):
        assert_same_function(ours, theirs)


def test_vgg16_becomes_fcns_trunk_with_fc6_fc7_as_convolutions():
    """FCN's trunk pads conv1_1 by 100 and rounds pooling up (Caffe); fc6/fc7 are torchvision's classifier.0
    and classifier.3 as convolutions. On an input whose maps stay even that is torchvision's VGG on the input
    zero-padded by 99 (plus its own padding of 1), and fc7 at each position is the classifier's two layers
    applied to that 7x7 window of pool5."""
    reference = _torchvision_vgg(batch_norm=False).eval()
    model = build_model("fcn8s", 5, encoder="vgg16")
    encoder = _load_encoder(model, convert(reference.state_dict(), "torchvision", "fcn8s", encoder="vgg16"))
    x = torch.randn(2, 3, 58, 58)  # 58 + 198 = 256: every pooling input even
    with torch.no_grad():
        pools = _pool_outputs(reference.features, F.pad(x, (99, 99, 99, 99)))
        windows = F.unfold(pools[-1], kernel_size=7)  # (N, 512 * 49, positions): torchvision's flatten order
        fc = reference.classifier
        fc7 = F.relu(fc[3](F.relu(fc[0](windows.transpose(1, 2)))))
        side = pools[-1].shape[-1] - 6
        expected = [*pools[:4], fc7.transpose(1, 2).reshape(2, -1, side, side)]
    got = _run(encoder, "eval", x)
    for ours, theirs in zip(got, expected, strict=True):
        assert_same_function(ours, theirs)


# ---------------------------------------------------------------- timm Swin (UPerNet's encoder)


@pytest.mark.parametrize("mode", MODES)
def test_timm_swin_tiny_gives_upernets_encoder_the_same_stages(mode):
    """timm's ImageNet Swin-T -> segbench's Swin encoder. Its four output norms are not in a classification
    checkpoint: the converter sets them to LayerNorm without affine change, so each segbench stage output is
    timm's stage output layer-normalised over channels.

    At 448x448, not 224: at 224 the last stage's 7x7 map is a single window, where the classification code
    (Microsoft's and timm's) drops the cyclic shift while the segmentation code segbench follows (Microsoft's
    Swin-UPerNet release) pads and always shifts, so the last stage differs by design; from 448 on both shift."""
    timm = _library("timm")
    torch.manual_seed(0)
    reference = randomise_constants(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=448))
    converted, report = convert_with_report(reference.state_dict(), "timm", "upernet", num_classes=5)
    assert not report.unexpected and not report.mismatched, str(report)
    assert all(not k.startswith("encoder.") for k in report.missing), str(report)  # the head only
    encoder = _load_encoder(build_model("upernet", 5, encoder="swin_t", drop_path_rate=0.0), converted)
    x = torch.randn(1, 3, 448, 448)  # no BatchNorm in Swin: one image is enough for training mode too
    set_mode(reference, mode)
    with torch.no_grad():
        stages = reference.forward_intermediates(x, intermediates_only=True, norm=False)
    expected = [F.layer_norm(s.permute(0, 2, 3, 1), s.shape[1:2]).permute(0, 3, 1, 2) for s in stages]
    for ours, theirs in zip(_run(encoder, mode, x), expected, strict=True):
        assert_same_function(ours, theirs)


# ---------------------------------------------------------------- Mix Transformer (SegFormer's encoder)


@pytest.mark.parametrize("mode", MODES)
def test_nvlabs_mit_b0_gives_segformers_encoder_the_same_stages(mode):
    """segmentation_models_pytorch's ``mit_b0`` encoder is NVlabs' ``mix_transformer.py`` with its key names:
    the ``nvlabs`` converter's ImageNet-file path."""
    smp = _library("segmentation_models_pytorch")
    torch.manual_seed(0)
    reference = randomise_constants(smp.encoders.get_encoder("mit_b0", in_channels=3, depth=5, weights=None))
    encoder = _load_encoder(build_model("segformer", 5, encoder="mit_b0", drop_path_rate=0.0),
                            convert(reference.state_dict(), "nvlabs", "segformer"))
    x = torch.randn(2, 3, 64, 64)
    set_mode(reference, mode)
    with torch.no_grad():
        expected = reference(x)[2:]  # smp adds the input and an empty stride-2 level in front
    for ours, theirs in zip(_run(encoder, mode, x), expected, strict=True):
        assert_same_function(ours, theirs)


@pytest.mark.parametrize("mode", MODES)
def test_hf_segformer_whole_model_in_both_modes(mode):
    """Hugging Face's SegFormer (MiT-B0 layout, slimmed) with its decode head, whose BatchNorm is what
    training mode changes; tests/checkpoints/test_segformer_weights.py covers its layouts in eval mode."""
    transformers = _library("transformers")
    torch.manual_seed(0)
    config = transformers.SegformerConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                          num_attention_heads=[1, 2, 4, 8], decoder_hidden_size=32, num_labels=5)
    reference = randomise_constants(transformers.SegformerForSemanticSegmentation(config))
    options = {"embed_dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8],
               "decoder_dim": 32, "norm_eps": 1e-5, "drop_path_rate": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted, report = convert_with_report(reference.state_dict(), "hf", "segformer", num_classes=5, **options)
    assert report.ok, str(report)
    model = build_model("segformer", 5, **options)
    model.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, 64, 64)
    set_mode(reference, mode)
    with torch.no_grad():
        expected = F.interpolate(reference(pixel_values=x).logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    assert_same_function(_run(model, mode, x), expected)


def test_randomisation_moves_what_a_swap_would_hide_behind():
    bn = randomise_constants(nn.BatchNorm2d(4))
    for name, constant in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        tensor = getattr(bn, name)
        assert not torch.all(tensor == constant) and tensor.unique().numel() == 4, name
    assert (bn.running_var > 0).all() and (bn.weight > 0).all()
