"""DeepLab v1 (LargeFOV): parameter count, output stride 8 and its alignment, the CRF in eval mode."""

import pytest
import torch

import segbench
from segbench.models.architectures.crf import ConvCRF
from segbench.models.architectures.deeplab_v1 import upsample_stride8_aligned


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def small(**options):
    return segbench.build_model("deeplabv1", num_classes=3, base_width=4, **options)


def test_paper_parameter_count():
    with torch.device("meta"):
        model = segbench.build_model("deeplabv1", num_classes=21)
    # VGG16 convs 14,714,688 + fc6 3x3x512x1024 4,719,616 + fc7 1,049,600 + fc8 21,525.
    assert count(model) == 20_505_429
    assert abs(count(model) - 20.5e6) / 20.5e6 < 0.01
    assert model.classifier.kernel_size == (1, 1) and model.classifier.in_channels == 1024


@pytest.mark.parametrize("size", [(97, 131), (1, 1), (16, 9)])
def test_any_input_size(size):
    model = small(in_channels=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, *size)).shape == (1, 3, *size)


def test_scores_at_stride_8_land_on_every_eighth_pixel():
    model = small().eval()
    x = torch.randn(1, 3, 65, 50)
    with torch.no_grad():
        scores = model.classifier(model.encoder(x)[-1])
        out = model(x)
    assert scores.shape[-2:] == (9, 8)  # (65 - 1) / 8 + 1; 50 -> ceil(49 / 8) + 1
    torch.testing.assert_close(out[..., ::8, ::8], scores[..., :, :7])
    # Between them: linear interpolation.
    torch.testing.assert_close(out[..., 4, 0], (scores[..., 0, 0] + scores[..., 1, 0]) / 2)


def test_upsampling_rejects_too_few_scores():
    with pytest.raises(RuntimeError, match="stride 8"):
        upsample_stride8_aligned(torch.zeros(1, 1, 2, 2), (20, 9))


def test_every_parameter_gets_a_gradient():
    model = small(crf=True).train()
    model(torch.randn(2, 3, 33, 27)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_crf_runs_in_eval_mode_only():
    plain = small()
    with_crf = small(crf=True, crf_iterations=3, crf_intensity_scale=255.0)
    with_crf.load_state_dict(plain.state_dict())
    assert isinstance(with_crf.crf, ConvCRF) and with_crf.crf.iterations == 3 and list(with_crf.crf.parameters()) == []
    x = torch.rand(1, 3, 41, 30)
    with torch.no_grad():
        plain.eval()
        logits = plain(x)
        with_crf.eval()
        refined = with_crf(x)
        torch.testing.assert_close(refined, with_crf.crf(logits, x * 255.0))
        assert not torch.allclose(refined, logits)
        plain.train()
        with_crf.train()
        torch.manual_seed(0)
        a = plain(x)
        torch.manual_seed(0)
        b = with_crf(x)
    torch.testing.assert_close(a, b)


def test_errors():
    with pytest.raises(ValueError, match="vgg16"):
        segbench.build_model("deeplabv1", num_classes=3, encoder="resnet101")
    from segbench.models.architectures.deeplab_v1 import DeepLabV1

    with pytest.raises(ValueError, match="largefov"):
        DeepLabV1(segbench.build_encoder("vgg16", variant="atrous", base_width=2), num_classes=3)
