"""Building blocks shared by several heads: conv-BN-ReLU, the FCN head (used as the auxiliary head of
FCN-ResNet, PSPNet, DeepLab v3 and UPerNet), resizing, and padding inputs to a size the network takes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvBNReLU", "FCNHead", "resize", "pad_to_multiple", "bilinear_kernel", "SegmentationModel"]


class ConvBNReLU(nn.Sequential):
    """Conv (no bias: BN supplies it), BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1, stride: int = 1):
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class FCNHead(nn.Sequential):
    """torchvision's FCN head: 3x3 conv to in/4 channels, BN, ReLU, dropout 0.1, 1x1 classifier.

    Its layout (and so its parameter count) matches ``torchvision.models.segmentation.fcn.FCNHead``,
    which is why it also serves as the auxiliary head on stage 3 of the dilated ResNets.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int | None = None, dropout: float = 0.1):
        channels = channels or in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )


def resize(x: Tensor, size: tuple[int, int] | torch.Size | Tensor) -> Tensor:
    """Bilinear resize (align_corners=False) that is a no-op when the size already matches.

    Given a reference tensor instead of a size, the result also takes the reference's memory format:
    a branch upsampled from a 1x1 map (pyramid pooling, ASPP's image pooling) is otherwise NCHW, and
    concatenating it with channels_last features silently drops the whole head to NCHW plus a copy.
    """
    ref = size if isinstance(size, Tensor) else None
    size = tuple((ref.shape if ref is not None else size)[-2:])
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if ref is not None and ref.dim() == 4 and not ref.is_contiguous() and ref.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def pad_to_multiple(x: Tensor, divisor: int) -> tuple[Tensor, tuple[int, int]]:
    """Zero-pad bottom/right so H and W are multiples of ``divisor``; returns the padded tensor and the
    original (H, W) so the caller can crop its logits back."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % divisor, (-w) % divisor
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x, (h, w)


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """Weights of a transposed convolution that performs bilinear upsampling, channel by channel
    (FCN, Long et al. 2015, Sec. 3.3: "we initialize to bilinear interpolation")."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt1d = 1 - (og - center).abs() / factor
    filt = filt1d[:, None] * filt1d[None, :]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt
    return weight


class Encoder(nn.Module):
    """Base of the backbones: ``forward(x) -> list[Tensor]`` (stage outputs, shallow to deep) with
    ``out_channels`` and ``strides`` one entry per output."""

    out_channels: tuple[int, ...]
    strides: tuple[int, ...]
    registry_name: str | None = None  # filled in by ``build_encoder``: which published weights fit it


class SegmentationModel(nn.Module):
    """Optional base: models that set ``encoder`` and, when they use an auxiliary head in training,
    ``aux_weight`` (the paper's loss weight). ``forward`` returns logits at input resolution; in
    training mode a model with an auxiliary head returns ``{"out": logits, "aux": aux_logits}``."""

    encoder: nn.Module
    aux_weight: float = 0.0
    # Filled in by the registry's ``build_model`` (None on a model built directly from its class):
    arch_name: str | None = None  # its registry name
    recipe: str | None = None  # "cnn" or "transformer" optimiser recipe; a model may refine its entry's (UPerNet)
    pretrained_report: object | None = None  # what ``segbench.checkpoints.load_pretrained`` loaded into it

    def _outputs(self, logits: Tensor, aux: Tensor | None) -> Tensor | dict[str, Tensor]:
        if self.training and aux is not None:
            return {"out": logits, "aux": aux}
        return logits
