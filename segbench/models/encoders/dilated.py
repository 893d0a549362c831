"""The encoders a dilated segmentation head (FCN, PSPNet, DeepLab v2/v3/v3+) can run on: those whose
builder takes ``output_stride`` (ResNet, MobileNetV3, EfficientNet), built with one clear error for the rest."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

import segbench.models.encoders  # noqa: F401  (registers the encoders a head may name)
from segbench.models.encoders.resnet import PAPER_MULTI_GRID, build_dilated_resnet
from segbench.models.registry import ENCODERS, build_encoder

__all__ = ["dilatable_encoders", "build_dilated_encoder"]


def dilatable_encoders() -> list[str]:
    """Registered encoders that take ``output_stride``."""
    return [n for n, e in ENCODERS.items() if "output_stride" in inspect.signature(e.builder).parameters]


def build_dilated_encoder(
    name: str, *, in_channels: int, output_stride: int, multi_grid: Sequence[int] | None = None, **options: Any
) -> nn.Module:
    """Build ``name`` at ``output_stride``. ``multi_grid`` (DeepLab v3's unit rates in the last stage) exists
    on ResNets only: other encoders take None or the heads' default, the paper's ``(1, 2, 4)``, which they
    ignore (their last stage is not the paper's three-block layer4); any other value is refused. ``options``
    go to the encoder's builder, which checks them."""
    valid = dilatable_encoders()
    if name not in valid:
        raise ValueError(f"encoder must take output_stride ({', '.join(valid)}), got {name!r}")
    if ENCODERS[name].kind == "resnet" and not options:
        return build_dilated_resnet(name, in_channels=in_channels, output_stride=output_stride, multi_grid=multi_grid)
    if multi_grid is not None and tuple(multi_grid) != PAPER_MULTI_GRID:
        raise ValueError(f"multi_grid applies to ResNet encoders only; {name!r} takes None (or the default (1, 2, 4), "
                         f"which it ignores), got {tuple(multi_grid)}")  # fmt: skip
    return build_encoder(name, in_channels=in_channels, output_stride=output_stride, **options)
