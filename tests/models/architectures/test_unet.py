import pytest
import torch

import segbench
from segbench.models.architectures.unet import valid_input_size, valid_output_size


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_paper_parameter_count():
    # Paper net: 1 input channel, 2 classes, width 64, no BatchNorm -> 31.03M.
    with torch.device("meta"):
        paper = segbench.build_model("unet", num_classes=2, in_channels=1, batch_norm=False)
        default = segbench.build_model("unet", num_classes=2, in_channels=1)
    assert count(paper) == 31_030_658
    assert abs(count(paper) - 31.03e6) / 31.03e6 < 0.005
    # BatchNorm adds a scale and a shift per channel and replaces the conv bias: +1 per channel of the
    # 18 3x3 convs, whose widths sum to 2*(64+128+256+512+1024) + 2*(512+256+128+64) = 5,888.
    assert count(default) - count(paper) == 5_888


def test_paper_tile_sizes():
    # Fig. 1: a 572x572 tile gives a 388x388 output.
    assert valid_output_size(572) == 388
    assert valid_input_size(388) == 572
    assert valid_output_size(571) is None


def test_layout_four_levels_halving_upconvs():
    model = segbench.build_model("unet", num_classes=2, in_channels=1, base_width=64)
    assert model.encoder.out_channels == (64, 128, 256, 512, 1024)
    ups = [(u.in_channels, u.out_channels, u.kernel_size, u.stride) for u in model.up_convs]
    assert ups == [(1024, 512, (2, 2), (2, 2)), (512, 256, (2, 2), (2, 2)), (256, 128, (2, 2), (2, 2)), (128, 64, (2, 2), (2, 2))]
    assert model.classifier.kernel_size == (1, 1)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("size", [(97, 131), (16, 16), (5, 7)])
def test_any_size_gives_input_resolution(padding, size):
    model = segbench.build_model("unet", num_classes=3, in_channels=1, base_width=4, padding=padding).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, *size)).shape == (1, 3, *size)


def test_valid_overlap_tile_is_the_papers_mirrored_572_tile():
    # Fig. 2: a 388x388 output region is predicted from the 572x572 tile that mirrors 92 pixels of context.
    model = segbench.build_model("unet", num_classes=2, in_channels=1, base_width=2, padding="valid").eval()
    x = torch.randn(1, 1, 388, 388)
    with torch.no_grad():
        raw = model._decode(torch.nn.functional.pad(x, (92, 92, 92, 92), mode="reflect"))
        assert raw.shape[-2:] == (388, 388)
        torch.testing.assert_close(model(x), raw)


def test_encoder_contract():
    enc = segbench.build_model("unet", num_classes=2, base_width=4).encoder
    feats = enc(torch.randn(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == list(enc.out_channels)
    assert [32 // f.shape[-1] for f in feats] == list(enc.strides)


def test_bad_padding():
    with pytest.raises(ValueError, match="padding"):
        segbench.build_model("unet", num_classes=2, padding="reflect")
