"""ResNet encoders: torchvision key layout, strides/channels true to the outputs, dilation semantics,
multi-grid, checkpoint loading."""

from __future__ import annotations


import pytest
import torch

from segbench import build_encoder
from segbench.checkpoints.load import load_backbone_weights
from tests.models.encoders.contract import outputs_as_declared

# torchvision's documented num_params minus the ImageNet fc (512*1000+1000 or 2048*1000+1000).
PARAMS_WITHOUT_FC = {
    "resnet18": 11_689_512 - 513_000,
    "resnet34": 21_797_672 - 513_000,
    "resnet50": 25_557_032 - 2_049_000,
    "resnet101": 44_549_160 - 2_049_000,
}
BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


def torchvision_resnet_shapes(name: str, in_channels: int = 3) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``torchvision.models.<name>().state_dict()``, written out from torchvision's
    ``ResNet._make_layer`` independently of segbench's code (fc included)."""
    bottleneck = name in ("resnet50", "resnet101")
    expansion = 4 if bottleneck else 1
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for k in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{k}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, in_channels, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), BLOCKS[name])):
        for b in range(count):
            p = f"layer{stage + 1}.{b}"
            if bottleneck:
                shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
                bn(f"{p}.bn1", planes)
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                bn(f"{p}.bn2", planes)
                shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                bn(f"{p}.bn3", planes * 4)
            else:
                shapes[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
                bn(f"{p}.bn1", planes)
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                bn(f"{p}.bn2", planes)
            if b == 0 and (stage > 0 or inplanes != planes * expansion):
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    shapes["fc.weight"] = (1000, 512 * expansion)
    shapes["fc.bias"] = (1000,)
    return shapes


@pytest.mark.parametrize("name", list(PARAMS_WITHOUT_FC))
def test_key_layout_and_parameter_count_equal_torchvision(name):
    with torch.device("meta"):
        encoder = build_encoder(name)
    expected = {k: v for k, v in torchvision_resnet_shapes(name).items() if not k.startswith("fc.")}
    actual = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert actual == expected
    assert sum(p.numel() for p in encoder.parameters()) == PARAMS_WITHOUT_FC[name]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_strides_and_channels_match_outputs(name, output_stride):
    encoder = build_encoder(name, output_stride=output_stride)
    outputs = outputs_as_declared(encoder)
    assert len(outputs) == 5 and encoder.strides[-1] == output_stride
    assert all(out.dtype == torch.float32 for out in outputs)


def test_strides_and_channels_values():
    assert build_encoder("resnet50", output_stride=8).strides == (2, 4, 8, 8, 8)
    assert build_encoder("resnet50", output_stride=16).strides == (2, 4, 8, 16, 16)
    assert build_encoder("resnet18").strides == (2, 4, 8, 16, 32)
    assert build_encoder("resnet18").out_channels == (64, 64, 128, 256, 512)
    assert build_encoder("resnet50").out_channels == (64, 256, 512, 1024, 2048)


def _dilation(conv) -> int:
    assert conv.dilation[0] == conv.dilation[1] and conv.padding[0] == conv.dilation[0]
    return conv.dilation[0]


def test_dilation_follows_torchvision_replace_stride_with_dilation():
    enc = build_encoder("resnet50", output_stride=8)
    # first block of a dilated stage keeps the previous dilation on its 3x3, the rest use the stage rate
    assert [_dilation(b.conv2) for b in enc.layer3] == [1] + [2] * 5
    assert [_dilation(b.conv2) for b in enc.layer4] == [2, 4, 4]
    for layer in (enc.layer3, enc.layer4):
        assert all(m.stride == (1, 1) for m in layer.modules() if isinstance(m, torch.nn.Conv2d))
    enc = build_encoder("resnet50", output_stride=16)
    assert [_dilation(b.conv2) for b in enc.layer3] == [1] * 6 and enc.layer3[0].conv2.stride == (2, 2)
    assert [_dilation(b.conv2) for b in enc.layer4] == [1, 2, 2]
    enc = build_encoder("resnet18", output_stride=8)
    assert [(_dilation(b.conv1), _dilation(b.conv2)) for b in enc.layer4] == [(2, 4), (4, 4)]


def test_multi_grid_rates_on_layer4():
    enc = build_encoder("resnet50", output_stride=16, multi_grid=(1, 2, 4))
    assert [_dilation(b.conv2) for b in enc.layer4] == [2, 4, 8]  # paper's example, Sec. 3.2
    enc = build_encoder("resnet101", output_stride=8, multi_grid=(1, 2, 4))
    assert [_dilation(b.conv2) for b in enc.layer4] == [4, 8, 16]
    assert [_dilation(b.conv2) for b in enc.layer3][:2] == [1, 2]  # other stages untouched
    enc = build_encoder("resnet18", output_stride=8, multi_grid=(1, 2))
    assert [(_dilation(b.conv1), _dilation(b.conv2)) for b in enc.layer4] == [(4, 4), (8, 8)]
    with torch.no_grad():
        assert enc.eval()(torch.randn(1, 3, 33, 41))[-1].shape[-2:] == (5, 6)


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        build_encoder("resnet18", output_stride=4)
    with pytest.raises(ValueError, match="resnet18 has 2 blocks"):
        build_encoder("resnet18", multi_grid=(1, 2, 4))
    with pytest.raises(TypeError, match="did you mean 'output_stride'"):
        build_encoder("resnet18", output_strides=8)


def _random_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape) + 0.5
        else:
            state[key] = torch.randn(shape)
    return state


def test_load_torchvision_checkpoint_drops_fc_and_loads_everything_else():
    state = _random_state(torchvision_resnet_shapes("resnet18"))
    encoder = build_encoder("resnet18", output_stride=8)
    report = load_backbone_weights(encoder, state)
    assert report.skipped == [] and report.missing == []  # adapt_state_dict dropped fc.*
    own = encoder.state_dict()
    assert len(report.loaded) == len(own) == len(state) - 2
    for key, tensor in own.items():
        torch.testing.assert_close(tensor, state[key], rtol=0, atol=0)


def test_load_adapts_stem_to_other_input_channels():
    state = _random_state(torchvision_resnet_shapes("resnet18"))
    gray = build_encoder("resnet18", in_channels=1)
    load_backbone_weights(gray, state)
    torch.testing.assert_close(gray.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    five = build_encoder("resnet18", in_channels=5)
    load_backbone_weights(five, state)
    w = state["conv1.weight"] * 3 / 5
    torch.testing.assert_close(five.conv1.weight, torch.cat([w, w[:, :2]], dim=1))


def test_load_wrong_depth_fails_loudly():
    state = _random_state(torchvision_resnet_shapes("resnet18"))
    with pytest.raises(KeyError, match="is it the right backbone"):
        load_backbone_weights(build_encoder("resnet34"), state)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_backbone_weights(build_encoder("resnet50"), state)
