"""Backbones. Every encoder honours one contract so any decoder can attach to any encoder:

- ``forward(x) -> list[Tensor]``: stage outputs, shallow to deep;
- ``out_channels: tuple[int, ...]`` and ``strides: tuple[int, ...]``, one entry per stage output,
  equal to what ``forward`` really returns (the tests check this);
- dilated variants take ``output_stride`` in {8, 16, 32}.

Parameter names follow the publisher of the usual ImageNet weights (torchvision for VGG, ResNet, MobileNetV3 and EfficientNet),
so their checkpoint files load with ``strict=True`` (``segbench.checkpoints.load``).
"""

from __future__ import annotations

from segbench.models.encoders import efficientnet, mit, mobilenetv3, resnet, swin, vgg  # noqa: F401  (registration)
