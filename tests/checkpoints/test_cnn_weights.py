"""CNN weight converters: torchvision (ResNet/VGG backbones, fcn_resnet*, deeplabv3_resnet*), timm ResNets,
MMSegmentation PSPNet. Foreign state dicts are written here from the publishers' documented layouts
(head keys spelled out; ResNet backbone keys equal torchvision's, which tests/encoders/test_resnet.py
checks independently), converted, and compared key by key, shape by shape and logit by logit."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from segbench import build_model
from segbench.checkpoints.convert import convert, convert_with_report

TORCHVISION_NUM_PARAMS = {  # torchvision's documented num_params (21 classes, with aux_classifier)
    ("fcn", "resnet50"): 35_322_218,
    ("fcn", "resnet101"): 54_314_346,
    ("deeplabv3", "resnet50"): 42_004_074,
    ("deeplabv3", "resnet101"): 60_996_202,
}


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    out = {f"{prefix}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")}
    out[f"{prefix}.num_batches_tracked"] = ()
    return out


def tv_fcn_head(prefix: str, c: int, nc: int) -> dict[str, tuple[int, ...]]:
    """torchvision FCNHead: 0 conv3x3 (no bias), 1 BN, 2 ReLU, 3 Dropout, 4 conv1x1."""
    return {f"{prefix}.0.weight": (c // 4, c, 3, 3), **_bn(f"{prefix}.1", c // 4),
            f"{prefix}.4.weight": (nc, c // 4, 1, 1), f"{prefix}.4.bias": (nc,)}


def tv_deeplab_head(c: int, nc: int) -> dict[str, tuple[int, ...]]:
    """torchvision DeepLabHead: 0 ASPP, 1 conv3x3, 2 BN, 3 ReLU, 4 conv1x1."""
    shapes = {"classifier.0.convs.0.0.weight": (256, c, 1, 1), **_bn("classifier.0.convs.0.1", 256)}
    for i in (1, 2, 3):
        shapes |= {f"classifier.0.convs.{i}.0.weight": (256, c, 3, 3), **_bn(f"classifier.0.convs.{i}.1", 256)}
    shapes |= {"classifier.0.convs.4.1.weight": (256, c, 1, 1), **_bn("classifier.0.convs.4.2", 256)}
    shapes |= {"classifier.0.project.0.weight": (256, 5 * 256, 1, 1), **_bn("classifier.0.project.1", 256)}
    shapes |= {"classifier.1.weight": (256, 256, 3, 3), **_bn("classifier.2", 256)}
    return shapes | {"classifier.4.weight": (nc, 256, 1, 1), "classifier.4.bias": (nc,)}


def mmseg_psp_heads(c: int, nc: int, bins: int = 4) -> dict[str, tuple[int, ...]]:
    """MMSeg PSPHead (channels=512) + auxiliary FCNHead (num_convs=1, channels=256, no concat_input)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(bins):
        shapes |= {f"decode_head.psp_modules.{i}.1.conv.weight": (c // bins, c, 1, 1),
                   **_bn(f"decode_head.psp_modules.{i}.1.bn", c // bins)}
    shapes |= {"decode_head.bottleneck.conv.weight": (512, 2 * c, 3, 3), **_bn("decode_head.bottleneck.bn", 512)}
    shapes |= {"decode_head.conv_seg.weight": (nc, 512, 1, 1), "decode_head.conv_seg.bias": (nc,)}
    shapes |= {"auxiliary_head.convs.0.conv.weight": (256, c // 2, 3, 3), **_bn("auxiliary_head.convs.0.bn", 256)}
    return shapes | {"auxiliary_head.conv_seg.weight": (nc, 256, 1, 1), "auxiliary_head.conv_seg.bias": (nc,)}


def resnet_backbone(name: str, prefix: str = "") -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        encoder = build_model("fcn", 1, encoder=name).encoder
    return {prefix + k: tuple(v.shape) for k, v in encoder.state_dict().items()}


def _meta(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def _check_layout(state, source, arch, expected_params=None, **options):
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted, report = convert_with_report(state, source, arch, num_classes=21, **options)
    assert report.ok, str(report)
    if expected_params is not None:
        params = sum(t.numel() for k, t in state.items() if not re.search(r"running_|num_batches", k))
        assert params == expected_params  # the spec written above is torchvision's model
    return converted


# --- torchvision whole models -----------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "encoder"), list(TORCHVISION_NUM_PARAMS))
def test_torchvision_segmentation_layout_converts_completely(arch, encoder):
    c = 2048
    head = tv_fcn_head("classifier", c, 21) if arch == "fcn" else tv_deeplab_head(c, 21)
    shapes = resnet_backbone(encoder, "backbone.") | head | tv_fcn_head("aux_classifier", c // 2, 21)
    options = {"encoder": encoder, "aux_head": True} | ({"multi_grid": None} if arch == "deeplabv3" else {})
    converted = _check_layout(_meta(shapes), "torchvision", arch, TORCHVISION_NUM_PARAMS[arch, encoder], **options)
    assert len(converted) == len(shapes)  # one-to-one


def to_torchvision(model: torch.nn.Module, arch: str) -> dict[str, torch.Tensor]:
    """segbench -> torchvision keys, written from the documented layout (the inverse of the converter)."""
    head = {"head.0.": "classifier.0.", "head.1.": "classifier.1.", "classifier.": "classifier.4."}
    if arch == "deeplabv3":
        head = {"aspp.": "classifier.0.", "head.0.": "classifier.1.", "head.1.": "classifier.2.",
                "classifier.": "classifier.4."}
    renames = {"encoder.": "backbone.", "aux_head.": "aux_classifier.", **head}
    out = {}
    for key, tensor in model.state_dict().items():
        prefix = next(p for p in renames if key.startswith(p))
        out[renames[prefix] + key[len(prefix):]] = tensor
    return out


def _randomize_bn(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("arch", ["fcn", "deeplabv3"])
def test_torchvision_checkpoint_gives_the_same_logits(arch):
    options = {"encoder": "resnet18", "aux_head": True} | ({"multi_grid": None} if arch == "deeplabv3" else {})
    original = build_model(arch, 5, **options)
    _randomize_bn(original)
    foreign = to_torchvision(original, arch)
    assert "backbone.layer4.1.conv2.weight" in foreign and "aux_classifier.4.bias" in foreign
    converted, report = convert_with_report(foreign, "torchvision", arch, num_classes=5, **options)
    assert report.ok, str(report)
    restored = build_model(arch, 5, **options)
    restored.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(x), original.eval()(x), rtol=0, atol=0)


def test_other_classes_and_no_aux_head_drop_the_right_keys():
    shapes = resnet_backbone("resnet50", "backbone.") | tv_fcn_head("classifier", 2048, 21)
    shapes |= tv_fcn_head("aux_classifier", 1024, 21)
    with torch.device("meta"):
        converted, report = convert_with_report(_meta(shapes), "torchvision", "fcn", num_classes=3, aux_head=True)
    assert sorted(report.missing) == ["aux_head.4.bias", "aux_head.4.weight", "classifier.bias", "classifier.weight"]
    assert not report.unexpected and not report.mismatched and "head.0.weight" in converted
    with torch.device("meta"):
        converted, report = convert_with_report(_meta(shapes), "torchvision", "fcn", num_classes=21)
    assert report.ok and not any(k.startswith("aux_head.") for k in converted)


def test_deeplabv3_with_multi_grid_warns_that_torchvision_has_none():
    shapes = resnet_backbone("resnet50", "backbone.") | tv_deeplab_head(2048, 21)
    with torch.device("meta"), pytest.warns(UserWarning, match="multi_grid=None"):
        convert(_meta(shapes), "torchvision", "deeplabv3", num_classes=21)


def test_wrong_depth_is_named():
    shapes = resnet_backbone("resnet101", "backbone.") | tv_fcn_head("classifier", 2048, 21)
    with torch.device("meta"), pytest.raises(ValueError, match="holds a resnet101.*pass encoder='resnet101'"):
        convert(_meta(shapes), "torchvision", "fcn", num_classes=21)


# --- ImageNet backbones: torchvision and timm ResNets ------------------------------------------------


@pytest.mark.parametrize("source", ["torchvision", "timm"])
@pytest.mark.parametrize("arch", ["fcn", "deeplabv2", "deeplabv3", "deeplabv3plus", "pspnet"])
def test_imagenet_resnet_fills_exactly_the_encoder(source, arch):
    encoder = "resnet101" if arch == "deeplabv2" else "resnet50"  # the archs' defaults
    shapes = resnet_backbone(encoder) | {"fc.weight": (1000, 2048), "fc.bias": (1000,)}
    with torch.device("meta"):
        converted, report = convert_with_report(_meta(shapes), source, arch, num_classes=21)
    assert not report.unexpected and not report.mismatched
    assert report.missing and all(not k.startswith("encoder.") for k in report.missing)
    assert len(converted) == len(shapes) - 2


def test_imagenet_resnet_values_land_in_the_encoder():
    model = build_model("pspnet", 4, encoder="resnet18")
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.encoder.state_dict().items()}
    state |= {"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    converted = convert(state, "timm", "pspnet", num_classes=4, encoder="resnet18")
    model.load_state_dict(converted, strict=False)
    for key, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, state[key])


def test_deep_stem_and_resnet_d_are_refused():
    deep_stem = {k: v for k, v in resnet_backbone("resnet50").items() if not k.startswith(("conv1.", "bn1."))}
    deep_stem |= {"conv1.0.weight": (32, 3, 3, 3), "conv1.1.weight": (32,)}
    with torch.device("meta"), pytest.raises(ValueError, match="deep stem"):
        convert(_meta(deep_stem), "timm", "pspnet")
    avg_down = resnet_backbone("resnet50") | {"layer2.0.downsample.2.weight": (512,)}
    with torch.device("meta"), pytest.raises(ValueError, match="average-pool shortcuts"):
        convert(_meta(avg_down), "timm", "pspnet")


# --- MMSegmentation ---------------------------------------------------------------------------------


def test_mmseg_pspnet_r50b_converts_completely():
    shapes = resnet_backbone("resnet50", "backbone.") | mmseg_psp_heads(2048, 21)
    checkpoint = {"meta": {"CLASSES": list(range(21))}, "state_dict": _meta(shapes)}
    converted = _check_layout(checkpoint, "mmseg", "pspnet")
    assert len(converted) == len(shapes)


def test_mmseg_pspnet_gives_the_same_logits():
    original = build_model("pspnet", 3, encoder="resnet18")
    _randomize_bn(original)
    renames = [  # segbench -> mmseg, from psp_head.py / fcn_head.py / decode_head.py
        (r"encoder\.(.+)", r"backbone.\1"),
        (r"ppm\.stages\.(\d)\.1\.(.+)", r"decode_head.psp_modules.\1.1.conv.\2"),
        (r"ppm\.stages\.(\d)\.2\.(.+)", r"decode_head.psp_modules.\1.1.bn.\2"),
        (r"bottleneck\.0\.(.+)", r"decode_head.bottleneck.conv.\1"),
        (r"bottleneck\.1\.(.+)", r"decode_head.bottleneck.bn.\1"),
        (r"classifier\.(.+)", r"decode_head.conv_seg.\1"),
        (r"aux_head\.0\.(.+)", r"auxiliary_head.convs.0.conv.\1"),
        (r"aux_head\.1\.(.+)", r"auxiliary_head.convs.0.bn.\1"),
        (r"aux_head\.4\.(.+)", r"auxiliary_head.conv_seg.\1"),
    ]
    foreign = {}
    for key, tensor in original.state_dict().items():
        pattern, replacement = next((p, r) for p, r in renames if re.fullmatch(p, key))
        foreign[re.sub(f"^{pattern}$", replacement, key)] = tensor
    assert set(foreign) == set(resnet_backbone("resnet18", "backbone.")) | set(mmseg_psp_heads(512, 3))
    checkpoint = {"state_dict": foreign}
    converted, report = convert_with_report(checkpoint, "mmseg", "pspnet", num_classes=3, encoder="resnet18")
    assert report.ok, str(report)
    restored = build_model("pspnet", 3, encoder="resnet18")
    restored.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, 41, 30)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(x), original.eval()(x), rtol=0, atol=0)


def test_mmseg_mismatches_are_refused_with_the_reason():
    v1c = resnet_backbone("resnet50", "backbone.")
    v1c = {k: v for k, v in v1c.items() if not k.startswith(("backbone.conv1", "backbone.bn1"))}
    v1c |= {"backbone.stem.0.weight": (32, 3, 3, 3), **_bn("backbone.stem.1", 32)}
    with torch.device("meta"), pytest.raises(ValueError, match="deep stem.*ResNetV1c"):
        convert(_meta(v1c | mmseg_psp_heads(2048, 21)), "mmseg", "pspnet", num_classes=21)
    aspp = {"decode_head.image_pool.1.conv.weight": (512, 2048, 1, 1),
            "decode_head.bottleneck.conv.weight": (512, 2560, 3, 3)}
    for arch in ("deeplabv3", "deeplabv3plus"):
        with pytest.raises(ValueError, match="no one-to-one mapping"):
            convert(_meta(aspp), "mmseg", arch)
    fcn = {"decode_head.convs.1.conv.weight": (512, 512, 3, 3), "decode_head.conv_cat.conv.weight": (512, 2560, 3, 3)}
    with pytest.raises(ValueError, match="one-conv FCN head"):
        convert(_meta(fcn), "mmseg", "fcn")


# --- VGG16 backbones --------------------------------------------------------------------------------

VGG16_CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
               (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]


def torchvision_vgg16(batch_norm: bool, width: int = 64) -> dict[str, tuple[int, ...]]:
    """torchvision vgg16 / vgg16_bn keys: conv (+BN), ReLU, and a max-pool after convs 2, 4, 7, 10, 13;
    ``classifier.0/3/6`` the three Linear layers. ``width`` < 64 scales every layer (tests only)."""
    shapes, index = {}, 0
    scale = width / 64
    for n, (cin, cout) in enumerate(VGG16_CONVS):
        cin, cout = (3 if n == 0 else int(cin * scale)), int(cout * scale)
        shapes |= {f"features.{index}.weight": (cout, cin, 3, 3), f"features.{index}.bias": (cout,)}
        if batch_norm:
            shapes |= _bn(f"features.{index + 1}", cout)
        index += 3 if batch_norm else 2
        if n in (1, 3, 6, 9, 12):
            index += 1
    fc = int(4096 * scale)
    return shapes | {"classifier.0.weight": (fc, int(512 * scale) * 49), "classifier.0.bias": (fc,),
                     "classifier.3.weight": (fc, fc), "classifier.3.bias": (fc,),
                     "classifier.6.weight": (1000, fc), "classifier.6.bias": (1000,)}


@pytest.mark.parametrize(
    ("arch", "batch_norm"), [("fcn8s", False), ("fcn32s", True), ("deeplabv1", False), ("segnet", True)]
)
def test_torchvision_vgg16_fills_exactly_the_encoder(arch, batch_norm):
    shapes = torchvision_vgg16(batch_norm)
    options = {"encoder": "vgg16_bn" if batch_norm else "vgg16"}
    with torch.device("meta"):
        converted, report = convert_with_report(_meta(shapes), "torchvision", arch, num_classes=21, **options)
    assert not report.unexpected and not report.mismatched, str(report)
    assert report.missing and all(not k.startswith("encoder.") for k in report.missing)
    assert all(k.startswith("encoder.") for k in converted)


def test_torchvision_vgg16_fc6_becomes_a_7x7_convolution():
    state = {k: torch.randn(s) for k, s in torchvision_vgg16(False, width=8).items()}
    converted = convert(state, "torchvision", "fcn32s", num_classes=2, base_width=8)
    torch.testing.assert_close(converted["encoder.fc6.weight"], state["classifier.0.weight"].reshape(512, 64, 7, 7))
    torch.testing.assert_close(converted["encoder.features.28.weight"], state["features.28.weight"])
    with torch.device("meta"), pytest.raises(ValueError, match="pass encoder='vgg16'"):
        convert(_meta(torchvision_vgg16(False)), "torchvision", "segnet")
