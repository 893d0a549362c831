"""Training losses: cross-entropy, soft Dice, and their sum (nnU-Net's default).

Every loss takes logits (N, C, H, W) and a label map (N, H, W) and skips pixels labelled
``ignore_index``. Class weights scale the cross-entropy terms (``torch.nn.CrossEntropyLoss``
semantics: a weighted mean); the Dice term is a plain mean over classes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LOSSES", "DiceLoss", "CEDiceLoss", "build_loss"]

LOSSES = ("ce", "dice", "ce+dice")


class DiceLoss(nn.Module):
    """Soft Dice loss, 1 - mean over foreground classes of 2|P.G| / (|P| + |G|) on softmax
    probabilities, summed over the whole batch ("batch Dice", Isensee et al. 2021, nnU-Net).

    Background (class 0) is left out when there are foreground classes, as nnU-Net does, so a
    large background cannot dominate the mean. ``smooth`` keeps empty classes from dividing by zero.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, smooth: float = 1e-5):
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.smooth = smooth

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        probs = logits.float().softmax(dim=1)
        valid = torch.ones_like(target, dtype=torch.bool)
        if self.ignore_index is not None:
            valid = target != self.ignore_index
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        # Built in the probabilities' dtype: F.one_hot's int64 (N, C, H, W) is 8 bytes a pixel and
        # class, about 5 GB at 150 classes, batch 16, 512x512, before its float copy.
        one_hot = torch.zeros_like(probs).scatter_(1, safe_target.unsqueeze(1), 1.0)
        mask = valid.unsqueeze(1).to(probs.dtype)
        probs, one_hot = probs * mask, one_hot * mask
        dims = (0, 2, 3)
        intersection = (probs * one_hot).sum(dims)
        denominator = probs.sum(dims) + one_hot.sum(dims)
        dice = (2 * intersection + self.smooth) / (denominator + self.smooth)
        if self.num_classes > 1:
            dice = dice[1:]
        return 1 - dice.mean()


class CEDiceLoss(nn.Module):
    """Cross-entropy plus soft Dice with equal weights (nnU-Net's ``DC_and_CE_loss``)."""

    def __init__(self, ce: nn.Module, dice: DiceLoss):
        super().__init__()
        self.ce, self.dice = ce, dice

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.ce(logits, target) + self.dice(logits, target)


class _CrossEntropy(nn.CrossEntropyLoss):
    # Computed in float32 so fp16/bf16 autocast cannot lose the small per-pixel terms.
    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return super().forward(logits.float(), target)


def build_loss(
    name: str, num_classes: int, ignore_index: int | None = 255, class_weights: list[float] | None = None
) -> nn.Module:
    """The loss called ``name`` (one of ``LOSSES``)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    weight = None
    if class_weights is not None:
        if len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} entries for {num_classes} classes")
        weight = torch.tensor(class_weights, dtype=torch.float32)
    ce = _CrossEntropy(weight=weight, ignore_index=-100 if ignore_index is None else ignore_index)
    dice = DiceLoss(num_classes, ignore_index)
    return {"ce": ce, "dice": dice, "ce+dice": CEDiceLoss(ce, dice)}[name]
