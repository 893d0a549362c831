"""PSPNet: pyramid pooling module, auxiliary head, shapes and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segbench import build_model


def test_parameter_count_resnet50():
    # resnet50 trunk (torchvision minus fc) + 4 bins x (1x1 2048->512 + BN) + 3x3 4096->512 (+BN)
    # + classifier 512->21 + aux FCN head on layer3 (3x3 1024->256 + BN, 1x1 256->21)
    expected = 23_508_032 + 4 * (2048 * 512 + 1024) + (4096 * 512 * 9 + 1024) + (512 * 21 + 21) + 2_365_205
    with torch.device("meta"):
        model = build_model("pspnet", 21)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_pyramid_layout_and_defaults():
    with torch.device("meta"):
        model = build_model("pspnet", 21)
    assert model.encoder.strides[-1] == 8
    assert [stage[0].output_size for stage in model.ppm.stages] == [1, 2, 3, 6]
    assert all(stage[1].out_channels == 2048 // 4 for stage in model.ppm.stages)
    assert model.bottleneck[0].in_channels == 2048 * 2 and model.bottleneck[0].out_channels == 512
    assert model.dropout.p == 0.1
    assert model.aux_head is not None and model.aux_weight == 0.4
    assert model.aux_head[0].in_channels == 1024 and model.classifier.out_channels == 21


def test_pyramid_concatenates_feature_then_upsampled_bins():
    model = build_model("pspnet", 3, encoder="resnet18", pool_bins=(1, 2)).eval()
    x = torch.randn(1, 512, 7, 9)
    with torch.no_grad():
        out = model.ppm(x)
        assert out.shape == (1, 512 + 2 * 256, 7, 9)
        torch.testing.assert_close(out[:, :512], x)
        # the 1x1 bin is one vector per image, constant over space after upsampling
        torch.testing.assert_close(out[:, 512:768], out[:, 512:768, :1, :1].expand(-1, -1, 7, 9))


def test_shapes_and_gradients_in_training_and_eval():
    model = build_model("pspnet", 4, encoder="resnet18")
    x = torch.randn(2, 3, 65, 97)
    out = model.train()(x)
    assert set(out) == {"out", "aux"} and out["out"].shape == out["aux"].shape == (2, 4, 65, 97)
    target = torch.randint(0, 4, (2, 65, 97))
    (F.cross_entropy(out["out"], target) + model.aux_weight * F.cross_entropy(out["aux"], target)).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    with torch.no_grad():
        logits = model.eval()(torch.randn(1, 3, 27, 40))
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 4, 27, 40)


def test_batch_of_one_trains_and_aux_can_be_disabled():
    model = build_model("pspnet", 2, encoder="resnet18", in_channels=2, aux_head=False).train()
    assert model.aux_head is None and model.aux_weight == 0.0
    logits = model(torch.randn(1, 2, 49, 49))  # 1x1 bin: one value per channel, handled
    assert logits.shape == (1, 2, 49, 49)


def test_bad_pool_bins_rejected():
    with pytest.raises(ValueError, match="pool_bins"):
        build_model("pspnet", 2, encoder="resnet18", pool_bins=(0, 2))
