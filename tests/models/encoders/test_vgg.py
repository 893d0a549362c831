"""VGG16 / VGG16-BN encoders: torchvision's layout, the FCN / DeepLab / SegNet variants, weight loading."""

import pytest
import torch
import torch.nn.functional as F

import segbench
from segbench.checkpoints.load import load_backbone_weights
from segbench.models.encoders.vgg import VGGEncoder

# torchvision's VGG16 ("D"): the conv positions in `features`, written out independently of the code.
VGG16_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
               (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512),
               (26, 512, 512), (28, 512, 512)]
VGG16_BN_CONVS = [(0, 3, 64), (3, 64, 64), (7, 64, 128), (10, 128, 128), (14, 128, 256), (17, 256, 256),
                  (20, 256, 256), (24, 256, 512), (27, 512, 512), (30, 512, 512), (34, 512, 512),
                  (37, 512, 512), (40, 512, 512)]


def torchvision_shapes(batch_norm: bool, num_batches_tracked: bool = True) -> dict[str, tuple]:
    shapes = {}
    for index, cin, cout in VGG16_BN_CONVS if batch_norm else VGG16_CONVS:
        shapes[f"features.{index}.weight"] = (cout, cin, 3, 3)
        shapes[f"features.{index}.bias"] = (cout,)
        if batch_norm:
            for name in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"features.{index + 1}.{name}"] = (cout,)
            if num_batches_tracked:
                shapes[f"features.{index + 1}.num_batches_tracked"] = ()
    shapes.update({
        "classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
        "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,),
        "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
    })
    return shapes


def numbered(shape) -> torch.Tensor:
    """Random, hence distinct, values: a wrong reshape or channel order shows."""
    return torch.randn(shape)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def empty_encoder(name: str, **options) -> VGGEncoder:
    with torch.device("meta"):
        encoder = segbench.build_encoder(name, **options)
    return encoder.to_empty(device="cpu")


@pytest.fixture(scope="module")
def torchvision_vgg16():
    return {k: numbered(s) for k, s in torchvision_shapes(batch_norm=False).items()}


@pytest.mark.parametrize("name,batch_norm,modules", [("vgg16", False, 31), ("vgg16_bn", True, 44)])
def test_features_have_torchvision_keys_and_shapes(name, batch_norm, modules):
    with torch.device("meta"):
        encoder = segbench.build_encoder(name)
    assert len(encoder.features) == modules
    ours = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    theirs = {k: v for k, v in torchvision_shapes(batch_norm).items() if k.startswith("features.")}
    assert ours == theirs


@pytest.mark.parametrize(
    "name,variant,expected",
    [
        ("vgg16", "plain", 14_714_688),
        ("vgg16_bn", "plain", 14_723_136),
        ("vgg16", "fcn", 134_260_544),  # + fc6 7x7x512x4096 and fc7 4096x4096
        ("vgg16", "atrous", 14_714_688),
        ("vgg16", "largefov", 20_483_904),  # + fc6 3x3x512x1024 and fc7 1024x1024
    ],
)
def test_parameter_counts(name, variant, expected):
    with torch.device("meta"):
        assert count(segbench.build_encoder(name, variant=variant)) == expected


@pytest.mark.parametrize("variant", ["plain", "fcn", "atrous", "largefov"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_contract_channels_and_strides_are_real(variant, batch_norm):
    encoder = VGGEncoder(variant=variant, batch_norm=batch_norm, base_width=4).eval()
    with torch.no_grad():
        small = encoder(torch.randn(1, 3, 65, 97))
        large = encoder(torch.randn(1, 3, 65 + 64, 97 + 32))
    assert len(small) == len(encoder.out_channels) == len(encoder.strides) == 5
    assert [f.shape[1] for f in small] == list(encoder.out_channels)
    # The stride is the step between output pixels in input pixels: 64 more input rows give 64 / stride
    # more output rows (this holds with FCN's 100-pixel padding too).
    assert [b.shape[-2] - a.shape[-2] for a, b in zip(small, large)] == [64 // s for s in encoder.strides]
    assert [b.shape[-1] - a.shape[-1] for a, b in zip(small, large)] == [32 // s for s in encoder.strides]


def test_plain_sizes_are_input_over_stride():
    encoder = VGGEncoder(base_width=4)
    feats = encoder(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in feats] == [(64 // s, 96 // s) for s in encoder.strides]
    assert encoder.strides == (2, 4, 8, 16, 32) and encoder.out_channels == (4, 8, 16, 32, 32)


def test_variant_geometry():
    fcn = VGGEncoder(variant="fcn", base_width=4)
    assert fcn.features[0].padding == (100, 100)
    assert all(m.padding == (1, 1) for m in fcn.features if isinstance(m, torch.nn.Conv2d) and m is not fcn.features[0])
    assert fcn.fc6.kernel_size == (7, 7) and fcn.fc6.padding == (0, 0) and fcn.fc6.out_channels == 256
    assert fcn.out_channels[-1] == 256 and fcn.strides[-1] == 32
    # FCN's 100-pixel padding lets even a 1x1 image reach fc7.
    assert fcn(torch.randn(1, 3, 1, 1))[-1].shape[-2:] == (1, 1)

    lfov = VGGEncoder(variant="largefov")
    pools = [m for m in lfov.features if isinstance(m, torch.nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding, p.ceil_mode) for p in pools] == (
        [(3, 2, 1, True)] * 3 + [(3, 1, 1, True)] * 2
    )
    convs = [m for m in lfov.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.dilation for c in convs] == [(1, 1)] * 10 + [(2, 2)] * 3
    assert lfov.fc6.kernel_size == (3, 3) and lfov.fc6.dilation == (12, 12) and lfov.fc6.out_channels == 1024
    assert lfov.fc7.out_channels == 1024 and lfov.out_channels[-1] == 1024
    assert lfov.strides == (2, 4, 8, 8, 8)
    # 8k+1 inputs give (k+1)-pixel maps at stride 8 (DeepLab's 321 -> 41, 513 -> 65).
    small = VGGEncoder(variant="largefov", base_width=2).eval()
    assert small(torch.randn(1, 3, 81, 41))[-1].shape[-2:] == (11, 6)


def test_forward_with_indices_points_at_the_maxima():
    encoder = VGGEncoder(base_width=4, ceil_mode=True).eval()
    x = torch.randn(1, 3, 45, 37)
    with torch.no_grad():
        feats, indices, sizes = encoder.forward_with_indices(x)
        assert all(torch.equal(a, b) for a, b in zip(feats, encoder(x)))
        before_pool1 = encoder.features[:4](x)
    assert [tuple(s) for s in sizes] == [(45, 37), (23, 19), (12, 10), (6, 5), (3, 3)]
    assert [tuple(i.shape) for i in indices] == [tuple(f.shape) for f in feats]
    gathered = before_pool1.flatten(2).gather(2, indices[0].flatten(2)).view_as(feats[0])
    assert torch.equal(gathered, feats[0])


def test_torchvision_vgg16_loads_into_fcn_trunk(torchvision_vgg16):
    encoder = empty_encoder("vgg16", variant="fcn")
    report = load_backbone_weights(encoder, torchvision_vgg16)
    assert sorted(report.loaded) == sorted(encoder.state_dict())
    assert report.skipped == [] and report.missing == []  # classifier.0/3 consumed, classifier.6 dropped
    tv = torchvision_vgg16
    assert torch.equal(encoder.fc6.weight, tv["classifier.0.weight"].reshape(4096, 512, 7, 7))
    assert torch.equal(encoder.fc6.bias, tv["classifier.0.bias"])
    assert torch.equal(encoder.fc7.weight[:, :, 0, 0], tv["classifier.3.weight"])
    assert torch.equal(encoder.features[28].weight, tv["features.28.weight"])
    # fc6 computes what VGG's first fully connected layer computes on a 7x7 pool5.
    pool5 = torch.randn(1, 512, 7, 7)
    as_conv = F.conv2d(pool5, encoder.fc6.weight, encoder.fc6.bias).flatten()
    as_linear = F.linear(pool5.flatten(1), tv["classifier.0.weight"], tv["classifier.0.bias"]).flatten()
    torch.testing.assert_close(as_conv, as_linear, rtol=1e-4, atol=1e-2)


def test_torchvision_vgg16_decimated_into_largefov(torchvision_vgg16):
    encoder = empty_encoder("vgg16", variant="largefov")
    load_backbone_weights(encoder, torchvision_vgg16)
    fc6 = torchvision_vgg16["classifier.0.weight"].reshape(4096, 512, 7, 7)
    assert torch.equal(encoder.fc6.weight, fc6[::4, :, ::3, ::3])
    assert torch.equal(encoder.fc7.weight[:, :, 0, 0], torchvision_vgg16["classifier.3.weight"][::4, ::4])


@pytest.mark.parametrize("num_batches_tracked", [True, False])
def test_torchvision_vgg16_bn_loads_strict(num_batches_tracked):
    shapes = torchvision_shapes(batch_norm=True, num_batches_tracked=num_batches_tracked)
    state = {k: (torch.empty(s) if k.startswith("classifier") else numbered(s)) for k, s in shapes.items()}
    encoder = segbench.build_encoder("vgg16_bn", base_width=64)
    report = load_backbone_weights(encoder, state)
    assert sorted(report.skipped) == [f"classifier.{i}.{p}" for i in (0, 3) for p in ("bias", "weight")]
    assert torch.equal(encoder.features[41].running_var, state["features.41.running_var"])
    # torchvision's own loader accepts exactly these keys with strict=True.
    encoder.features.load_state_dict(
        {k[len("features."):]: v for k, v in encoder.adapt_state_dict(state).items() if k.startswith("features.")},
        strict=True,
    )


@pytest.mark.parametrize("in_channels", [1, 4])
def test_rgb_weights_adapt_to_other_channel_counts(in_channels):
    state = {k: numbered(s) for k, s in torchvision_shapes(False).items() if k.startswith("features.")}
    encoder = segbench.build_encoder("vgg16", in_channels=in_channels)
    load_backbone_weights(encoder, state)
    rgb = state["features.0.weight"]
    assert encoder.features[0].weight.shape == (64, in_channels, 3, 3)
    # A grey image copied to every channel gives the RGB net's response to that grey image.
    grey = torch.randn(1, 1, 9, 9)
    theirs = F.conv2d(grey.expand(-1, 3, -1, -1), rgb, state["features.0.bias"], padding=1)
    ours = encoder.features[0](grey.expand(-1, in_channels, -1, -1))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="variant"):
        segbench.build_encoder("vgg16", variant="deeplab")
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        VGGEncoder(in_channels=2, base_width=2)(torch.randn(1, 3, 8, 8))
    with pytest.raises(TypeError, match="batch_norm"):
        segbench.build_encoder("vgg16", batch_norm=True)  # bound by the name: use vgg16_bn
