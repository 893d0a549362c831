import torch

import segbench
from segbench.models.blocks import bilinear_kernel, resize


def test_resize_to_a_reference_takes_its_memory_format():
    ref = torch.randn(1, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    pooled = torch.randn(1, 4, 1, 1)  # a 1x1 map: its layout is ambiguous, interpolate returns NCHW
    out = resize(pooled, ref)
    assert out.shape == (1, 4, 6, 6)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, resize(pooled, ref.shape))
    assert resize(ref, ref) is ref  # same size, same layout: no copy


def test_pyramid_pooling_keeps_channels_last_into_the_bottleneck():
    model = segbench.build_model("pspnet", 3, encoder="resnet18").eval().to(memory_format=torch.channels_last)
    seen = []
    model.bottleneck[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0]))  # noqa: ARG005
    model(torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last))
    assert seen and seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()


def test_bilinear_kernel_upsamples_bilinearly():
    # A 4x4 transposed conv with stride 2 initialised bilinear doubles a constant map exactly (inside).
    w = bilinear_kernel(1, 4)
    up = torch.nn.functional.conv_transpose2d(torch.ones(1, 1, 4, 4), w, stride=2, padding=1)
    assert torch.allclose(up[..., 1:-1, 1:-1], torch.ones(1, 1, 6, 6))
