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
