"""The one training step: what it computes, in which precision, with which loss."""

import pytest
import torch
from torch import nn

from segbench.engine.device import Precision
from segbench.engine.losses import build_loss
from segbench.engine.step import TrainStep

FP32 = Precision(None, "cpu")


class WithAux(nn.Module):
    """Main and auxiliary logits from one conv each, as the papers' aux heads are used in training."""

    def __init__(self):
        super().__init__()
        self.main, self.aux = nn.Conv2d(1, 3, 1), nn.Conv2d(1, 3, 1)

    def forward(self, x):
        return {"out": self.main(x), "aux": self.aux(x)} if self.training else self.main(x)


class OwnLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)

    def forward(self, x):
        return self.conv(x)

    def training_loss(self, x, target):
        return nn.functional.cross_entropy(self.conv(x), target) * 2


def batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 1, 6, 6, generator=generator), torch.randint(0, 3, (2, 6, 6), generator=generator)


def test_loss_is_the_criterion_on_main_plus_weighted_aux():
    model = WithAux()
    criterion = build_loss("ce", 3)
    x, y = batch()
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), criterion, precision=FP32, aux_weight=0.4)
    expected = criterion(model.main(x), y) + 0.4 * criterion(model.aux(x), y)
    torch.testing.assert_close(step.loss(x, y), expected)
    no_aux = TrainStep(model, None, criterion, precision=FP32, aux_weight=0.0)
    torch.testing.assert_close(no_aux.loss(x, y), criterion(model.main(x), y))


def test_a_peer_computes_its_own_loss():
    model = OwnLoss()
    x, y = batch()
    step = TrainStep(model, None, None, precision=FP32)
    torch.testing.assert_close(step.loss(x, y), 2 * nn.functional.cross_entropy(model.conv(x), y))


def test_step_updates_like_a_hand_written_sgd_step_and_clips():
    model, twin = WithAux(), WithAux()
    twin.load_state_dict(model.state_dict())
    criterion = build_loss("ce", 3)
    x, y = batch()
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.5), criterion, precision=FP32, aux_weight=0.4,
                     grad_clip=0.01)
    loss = step(x, y)
    reference = criterion(twin.main(x), y) + 0.4 * criterion(twin.aux(x), y)
    reference.backward()
    norm = torch.sqrt(sum((p.grad**2).sum() for p in twin.parameters()))
    assert norm > 0.01  # so the clipping matters
    with torch.no_grad():
        for p in twin.parameters():
            p -= 0.5 * p.grad * (0.01 / (norm + 1e-6))
    assert loss.requires_grad is False and loss.item() == pytest.approx(reference.item())
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)


def test_forward_runs_under_the_precision_and_the_loss_in_float32():
    model = WithAux()
    seen = []
    model.main.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), build_loss("ce", 3),
                     precision=Precision(torch.bfloat16, "cpu"))
    loss = step(*batch())
    assert seen == [torch.bfloat16] and loss.dtype == torch.float32
    assert not step.scaler.is_enabled()  # loss scaling is for fp16 only
