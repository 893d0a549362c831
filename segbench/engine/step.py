"""The one training step: forward under the run's precision, the run's loss (with the auxiliary head's
at the paper's weight), backward (through a ``GradScaler`` for fp16), optional gradient clipping,
optimizer step.

Training, ``segbench speed``, the review's Speed section and the input-pipeline measurement all call
this class, so a "training step" means the same work wherever segbench times or runs one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segbench.engine.device import Precision

__all__ = ["TrainStep", "grad_scaler"]


def grad_scaler(precision: Precision) -> torch.amp.GradScaler:
    """Loss scaling for fp16, whose narrow exponent underflows small gradients; a no-op otherwise."""
    return torch.amp.GradScaler(precision.device_type, enabled=precision.needs_scaler)


class TrainStep:
    """One optimisation step of ``model`` on a batch.

    ``criterion`` is the run's loss (``segbench.engine.losses.build_loss``), applied to the main logits
    and, times ``aux_weight``, to the auxiliary head's. ``criterion=None`` is for a peer implementation
    that computes its own loss (``model.training_loss(images, masks)``, its library's recipe).
    The loss stays on the device: reading it is the caller's choice (a read waits for the device).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: nn.Module | None,
        *,
        precision: Precision,
        aux_weight: float = 0.0,
        grad_clip: float | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
        scaler: torch.amp.GradScaler | None = None,
    ):
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.precision, self.aux_weight, self.grad_clip, self.memory_format = precision, aux_weight, grad_clip, memory_format
        self.scaler = scaler or grad_scaler(precision)  # a resumed run passes the one it restored
        self.device = next(model.parameters()).device

    def loss(self, images: Tensor, masks: Tensor) -> Tensor:
        """The forward pass and the loss of one batch, in training mode (no backward)."""
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        masks = masks.to(self.device, non_blocking=True)
        self.model.train()
        if self.criterion is None:
            with self.precision.autocast():
                return self.model.training_loss(images, masks)
        with self.precision.autocast():
            out = self.model(images)
        # Outside autocast: the losses compute in float32 (small per-pixel terms survive bf16/fp16 logits).
        logits, aux = (out["out"], out.get("aux")) if isinstance(out, dict) else (out, None)
        loss = self.criterion(logits, masks)
        if aux is not None and self.aux_weight:
            loss = loss + self.aux_weight * self.criterion(aux, masks)
        return loss

    def __call__(self, images: Tensor, masks: Tensor) -> Tensor:
        """Forward, loss, backward, optimizer step; returns the loss, detached, on the device."""
        loss = self.loss(images, masks)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()
