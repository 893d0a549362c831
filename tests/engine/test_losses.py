import math

import pytest
import torch
import torch.nn.functional as F

from segbench.engine.losses import build_loss


def _logits_from_foreground_probs(probs):
    # Two classes: logits (log(1-p), log(p)) give softmax probabilities (1-p, p).
    p = torch.tensor(probs)
    return torch.stack([torch.log(1 - p), torch.log(p)])[None, :, None, :]  # (1, 2, 1, W)


def test_dice_loss_by_hand_with_ignored_pixel():
    # foreground probabilities 0.8, 0.3, 0.9 on labels 1, 0, ignored:
    # intersection 0.8, |P| + |G| = 1.1 + 1 -> Dice 1.6 / 2.1 (background left out)
    loss = build_loss("dice", num_classes=2, ignore_index=255)
    value = loss(_logits_from_foreground_probs([0.8, 0.3, 0.9]), torch.tensor([[[1, 0, 255]]]))
    assert value.item() == pytest.approx(1 - (1.6 + 1e-5) / (2.1 + 1e-5), abs=1e-6)


def test_dice_loss_extremes():
    loss = build_loss("dice", num_classes=3)
    target = torch.tensor([[[0, 1, 2, 2]]])
    perfect = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 100
    assert loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    wrong = F.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float() * 100
    assert loss(wrong, target).item() == pytest.approx(1.0, abs=1e-4)


def test_cross_entropy_weights_and_ignore_match_torch():
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0, :] = 255
    weights = [0.2, 1.0, 3.0]
    loss = build_loss("ce", 3, 255, weights)(logits, target)
    expected = F.cross_entropy(logits, target, weight=torch.tensor(weights), ignore_index=255)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_ce_plus_dice_is_the_sum():
    logits, target = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))
    total = build_loss("ce+dice", 3)(logits, target).item()
    parts = build_loss("ce", 3)(logits, target).item() + build_loss("dice", 3)(logits, target).item()
    assert total == pytest.approx(parts, rel=1e-6) and math.isfinite(total)


def test_gradients_flow_and_bad_arguments():
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    build_loss("ce+dice", 2)(logits, torch.randint(0, 2, (1, 3, 3))).backward()
    assert logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown loss 'focal'; valid: ce, dice, ce\\+dice"):
        build_loss("focal", 2)
    with pytest.raises(ValueError, match="class_weights has 2 entries for 3 classes"):
        build_loss("ce", 3, class_weights=[1.0, 2.0])


def _dice_with_int64_one_hot(logits, target, num_classes, ignore_index=255, smooth=1e-5):
    # The formula as first written (F.one_hot, int64), for comparison.
    probs = logits.float().softmax(1)
    valid = target != ignore_index
    one_hot = F.one_hot(torch.where(valid, target, 0), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    mask = valid.unsqueeze(1).to(probs.dtype)
    probs, one_hot = probs * mask, one_hot * mask
    dice = (2 * (probs * one_hot).sum((0, 2, 3)) + smooth) / (probs.sum((0, 2, 3)) + one_hot.sum((0, 2, 3)) + smooth)
    return 1 - dice[1:].mean()


@pytest.mark.parametrize("logits_dtype", [torch.float32, torch.bfloat16])
def test_dice_one_hot_is_built_in_the_probabilities_dtype(logits_dtype):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.int64_sizes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.int64:
                    self.int64_sizes.append(t.numel())
            return out

    classes = 150
    logits = torch.randn(2, classes, 8, 8).to(logits_dtype)
    target = torch.randint(0, classes, (2, 8, 8))
    target[0, :2] = 255
    with Record() as record:
        value = build_loss("dice", classes, 255)(logits, target)
    assert max(record.int64_sizes) < logits.numel(), record.int64_sizes  # no int64 tensor of (N, C, H, W)
    assert torch.equal(value, _dice_with_int64_one_hot(logits, target, classes))  # same figure, bit for bit
