"""torchvision's LR-ASPP (``lraspp_mobilenet_v3_large``) onto segbench's ``lraspp``.

torchvision's keys: ``backbone.{i}.*`` (``IntermediateLayerGetter`` over ``mobilenet_v3_large(dilated=True)
.features``, modules 0 to 16 under their own indices) and ``classifier.{cbr,scale,low_classifier,
high_classifier}.*`` (``LRASPPHead``). segbench's: ``encoder.features.{i}.*`` (the MobileNetV3 encoder has
torchvision's names) and the head's modules at the top level under the same names. A bare ImageNet
``mobilenet_v3_*`` file (``features.*`` and ``classifier.{0,3}``, the ImageNet classifier) contributes the
encoder only. The classifiers are dropped when ``num_classes`` differs (fine-tuning on other classes); the
stem conv is adapted to other than three input channels by the encoder's ``adapt_state_dict``.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from segbench.checkpoints.convert import register_converter
from segbench.checkpoints.io import unwrap_state_dict

__all__ = ["from_torchvision_lraspp"]

_HEAD = ("cbr", "scale", "low_classifier", "high_classifier")


def from_torchvision_lraspp(
    state_dict: dict[str, Tensor], *, num_classes: int | None = None, **model_options: Any
) -> dict[str, Tensor]:
    """torchvision ``LRASPP`` (or a bare ``mobilenet_v3_*`` ImageNet file) -> ``lraspp`` keys."""
    from segbench.models.registry import build_model

    state = unwrap_state_dict(state_dict)
    with torch.device("meta"):
        model = build_model("lraspp", num_classes or 1, **model_options)
    backbone, head = {}, {}
    for key, value in state.items():
        if m := re.fullmatch(r"backbone\.(\d+\..+)", key):
            backbone[f"features.{m[1]}"] = value
        elif key.startswith("features."):
            backbone[key] = value
        elif (m := re.fullmatch(r"classifier\.(\w+)\.(.+)", key)) and m[1] in _HEAD:
            head[f"{m[1]}.{m[2]}"] = value
        elif key.startswith("classifier."):  # the ImageNet classifier of a bare backbone file
            backbone[key] = value
        else:
            head[key] = value  # unknown: kept, so the conversion report lists it as unexpected
    backbone = model.encoder.adapt_state_dict(backbone)
    weight = head.get("high_classifier.weight")
    if num_classes is not None and weight is not None and weight.shape[0] != num_classes:
        head = {k: v for k, v in head.items() if not k.startswith(("low_classifier.", "high_classifier."))}
    return {**{f"encoder.{k}": v for k, v in backbone.items()}, **head}


register_converter("torchvision", "lraspp")(from_torchvision_lraspp)
