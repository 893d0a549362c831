"""Layers the transformer encoders share."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["DropPath"]


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. ECCV 2016): in training, drop a sample's residual branch with
    probability ``drop_prob`` and scale the kept ones by 1/(1 - drop_prob), so the expectation is unchanged."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * (mask / keep)  # scale the (B, 1, ...) mask, not the whole tensor

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
