"""Weights from files: reading them, telling which toolkit wrote them, converting their keys, fetching the
published ImageNet backbones, and loading any of these into a built model.

- ``io``: ``read_checkpoint`` (the one read: safetensors or ``weights_only`` pickles, wrappers unwrapped);
- ``formats``: which toolkit's key layout a state dict has (``detect_format``), its backbone in the
  encoder's own keys;
- ``convert``: one module per model family mapping other toolkits' keys onto segbench's (``segbench convert``);
- ``imagenet``: the published ImageNet weights by encoder name (URL, digest, download, cache);
- ``load``: loading into a model, with one report of what was loaded, skipped, adapted or left random.

``build_pretrained_model(arch, num_classes, pretrained=...)`` below is the registry's ``build_model``
followed by that load (``segbench.build_pretrained_model`` is this function; ``segbench.build_model`` is the
registry's, random weights only).
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from segbench.checkpoints.load import load_pretrained
from segbench.models import registry

__all__ = ["build_pretrained_model"]


def build_pretrained_model(
    name: str, num_classes: int, in_channels: int = 3, *, pretrained: str | os.PathLike | None = None, **options: Any
) -> nn.Module:
    """``segbench.models.build_model`` and then, when ``pretrained`` is given, ``load_pretrained``:
    ``"imagenet"`` (the encoder's published ImageNet weights) or a checkpoint path (any layout
    ``detect_format`` knows). ``model.pretrained_report`` says what was loaded (None: nothing, as with
    ``pretrained=None``, which builds exactly what ``build_model`` builds)."""
    model = registry.build_model(name, num_classes, in_channels, **options)
    model.pretrained_report = load_pretrained(model, pretrained, options=options)
    return model
