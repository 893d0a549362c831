"""The architectures and their backbones, built from a registry; imports only torch.

- ``registry``: ``build_model`` / ``build_encoder`` by name, options checked against each builder's
  signature; ``ARCHITECTURES`` and ``ENCODERS`` hold each entry's paper, year, recipe and review text;
- ``blocks``: what several architectures share (``SegmentationModel``, ``Encoder``, ``ConvBNReLU``,
  ``FCNHead``, ``resize``);
- ``encoders``: VGG, ResNet, MobileNetV3, EfficientNet, MiT, Swin (one contract: ``forward(x) -> list[Tensor]``, ``out_channels``,
  ``strides``);
- ``architectures``: one module per method, importing it registers its builders (by year).
"""

from segbench.models.registry import build_encoder, build_model, list_encoders, list_models, model_options

__all__ = ["build_model", "build_encoder", "list_models", "list_encoders", "model_options"]
