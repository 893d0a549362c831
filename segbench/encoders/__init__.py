"""Backbones. Every encoder honours one contract so any decoder can attach to any encoder:

- ``forward(x) -> list[Tensor]``: stage outputs, shallow to deep;
- ``out_channels: tuple[int, ...]`` and ``strides: tuple[int, ...]``, one entry per stage output,
  equal to what ``forward`` really returns (the tests check this);
- dilated variants take ``output_stride`` in {8, 16, 32}.

Parameter names follow the publisher of the usual ImageNet weights (torchvision for VGG and ResNet),
so their checkpoint files load with ``strict=True``; see ``load_backbone_weights``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from segbench.weights import read_checkpoint
from segbench.encoders import mit, resnet, swin, vgg  # noqa: F401  (registration)

__all__ = ["LoadReport", "load_backbone_weights", "keys_beyond_model"]


@dataclass
class LoadReport:
    """What a weight load did: which keys were loaded, and which were skipped (in the file, not
    wanted) or missing (wanted, left at their initialisation)."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"loaded {len(self.loaded)} tensors, skipped {len(self.skipped)}, left initialised {len(self.missing)}"


def keys_beyond_model(keys: Iterable[str], own: Iterable[str]) -> list[str]:
    """Of ``keys``, those with no place among ``own`` that name another copy of a module it has
    (``layers.2.blocks.5`` where the model's stage stops at ``blocks.1``; ``layer1.2`` of a ResNet-34 file
    for a ResNet-18): the file's backbone is deeper, and loading only its first blocks would silently
    start another network."""
    own = set(own)
    patterns = {re.sub(r"\d+", "#", k) for k in own}
    return [k for k in keys if k not in own and re.sub(r"\d+", "#", k) in patterns]


def load_backbone_weights(target: nn.Module, source: str | Path | dict) -> LoadReport:
    """Load backbone weights from a file or state dict into an encoder (or a model's ``.encoder``).

    The file uses the encoder's native key layout (torchvision for VGG/ResNet). Keys the encoder has
    no place for (an ImageNet classifier) are skipped; the encoder may adapt tensors first through
    its ``adapt_state_dict`` (e.g. FCN's fc6 takes VGG's first classifier layer reshaped to 7x7).
    Every encoder parameter must then be present: the load is strict on the encoder's side.
    """
    encoder = getattr(target, "encoder", target)
    state = source if isinstance(source, dict) else read_checkpoint(source)
    adapt = getattr(encoder, "adapt_state_dict", None)
    if adapt is not None:
        state = adapt(dict(state))
    own = encoder.state_dict()
    report = LoadReport()
    wanted = {}
    for key, tensor in state.items():
        if key not in own:
            report.skipped.append(key)
            continue
        if tuple(own[key].shape) != tuple(tensor.shape):
            raise ValueError(
                f"shape mismatch for {key!r}: checkpoint {tuple(tensor.shape)} vs encoder {tuple(own[key].shape)}"
            )
        wanted[key] = tensor
    # BatchNorm's num_batches_tracked is absent from older torchvision files; it only feeds momentum=None.
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    beyond = keys_beyond_model(state, own)
    if beyond:
        raise ValueError(f"the checkpoint's backbone is deeper than the encoder: {len(beyond)} tensors have no "
                         f"place in it, e.g. {beyond[:3]}; is it the right backbone?")
    report.missing = [k for k in own if k not in wanted and k not in optional]
    if report.missing:
        raise KeyError(
            f"checkpoint lacks {len(report.missing)} encoder tensors, e.g. {report.missing[:5]}; "
            "is it the right backbone?"
        )
    encoder.load_state_dict(wanted, strict=not (optional - wanted.keys()))
    report.loaded = list(wanted)
    return report
