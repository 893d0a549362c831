"""``fcn``: torchvision's FCN on a dilated ResNet (``fcn_resnet.py``; the paper's VGG16 nets are in test_fcn_vgg.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segbench import build_model


def _loss(out, num_classes: int, aux_weight: float) -> torch.Tensor:
    logits = out["out"] if isinstance(out, dict) else out
    target = torch.randint(0, num_classes, (logits.shape[0], *logits.shape[-2:]))
    loss = F.cross_entropy(logits, target)
    if isinstance(out, dict):
        loss = loss + aux_weight * F.cross_entropy(out["aux"], target)
    return loss


@pytest.mark.parametrize(("encoder", "expected"), [("resnet50", 35_322_218), ("resnet101", 54_314_346)])
def test_parameter_count_equals_torchvision(encoder, expected):
    # torchvision's documented num_params of fcn_resnet50 / fcn_resnet101 (21 classes, aux classifier)
    with torch.device("meta"):
        model = build_model("fcn", 21, encoder=encoder, aux_head=True)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_shapes_train_and_eval_and_every_parameter_learns():
    model = build_model("fcn", 5, encoder="resnet18", aux_head=True)
    assert model.aux_weight == 0.5
    assert isinstance(model.classifier, torch.nn.Conv2d) and model.classifier.kernel_size == (1, 1)
    assert model.classifier.out_channels == 5
    x = torch.randn(2, 3, 65, 97)
    model.train()
    out = model(x)
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (2, 5, 65, 97)
    _loss(out, 5, model.aux_weight).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 33, 50))
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 5, 33, 50) and logits.dtype == torch.float32


def test_without_aux_head_returns_plain_logits_in_training():
    model = build_model("fcn", 3, encoder="resnet18", in_channels=1, output_stride=16).train()
    assert model.aux_head is None and model.aux_weight == 0.0
    assert model.encoder.strides[-1] == 16
    assert model(torch.randn(2, 1, 40, 31)).shape == (2, 3, 40, 31)


def test_non_resnet_encoder_is_rejected():
    with pytest.raises(ValueError, match="encoder must take output_stride"):
        build_model("fcn", 3, encoder="vgg16")
