"""Weights from other toolkits: map their checkpoints' keys onto segbench's.

``convert(state_dict, source, arch, **model_options)`` returns a segbench-keyed state dict for
``build_model(arch, **model_options)``. Converters are registered per (source, architecture) by the
modules below, one per model family; ``convert`` builds the target model to compare keys and shapes
and reports what was missing or unexpected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["SOURCES", "ConversionReport", "register_converter", "convert", "convert_with_report", "CONVERTERS"]

SOURCES = ("hf", "mmseg", "nvlabs", "microsoft", "torchvision", "timm")

# (source, arch) -> fn(state_dict, **model_options) -> segbench state dict (possibly partial: encoder only)
CONVERTERS: dict[tuple[str, str], Callable[..., dict[str, torch.Tensor]]] = {}


def register_converter(source: str, *archs: str):
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")

    def decorator(fn):
        for arch in archs:
            CONVERTERS[(source, arch)] = fn
        return fn

    return decorator


@dataclass
class ConversionReport:
    """Keys of the target model the converted dict does not fill (``missing``), converted keys the
    model does not have (``unexpected``), and shape disagreements."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"missing {len(self.missing)}, unexpected {len(self.unexpected)}, shape mismatches {len(self.mismatched)}"]
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("mismatched", self.mismatched)):
            lines += [f"  {title}: {k}" for k in keys[:20]] + ([f"  ... {len(keys) - 20} more"] if len(keys) > 20 else [])
        return "\n".join(lines)


def _load_modules() -> None:
    from segbench.checkpoints.convert import cnn, mobile, segformer, swin  # noqa: F401  (registration)


def convert_with_report(
    state_dict: dict[str, torch.Tensor], source: str, arch: str, num_classes: int | None = None, **model_options: Any
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Convert and compare against ``build_model(arch, num_classes, **model_options)``."""
    from segbench.models.registry import build_model

    _load_modules()
    key = (source, arch)
    if key not in CONVERTERS:
        known = sorted(f"{s}:{a}" for s, a in CONVERTERS)
        raise KeyError(f"no converter from {source!r} for architecture {arch!r}. Known source:arch pairs: {', '.join(known)}")
    converted = CONVERTERS[key](dict(state_dict), num_classes=num_classes, **model_options)
    if num_classes is None:
        num_classes = infer_num_classes(converted) or 1
    target = build_model(arch, num_classes, **model_options).state_dict()
    report = ConversionReport(
        missing=[k for k in target if k not in converted],
        unexpected=[k for k in converted if k not in target],
        mismatched=[
            f"{k}: {tuple(v.shape)} vs model {tuple(target[k].shape)}"
            for k, v in converted.items()
            if k in target and tuple(v.shape) != tuple(target[k].shape)
        ],
    )
    return converted, report


def convert(state_dict: dict[str, torch.Tensor], source: str, arch: str, **model_options: Any) -> dict[str, torch.Tensor]:
    """Convert a foreign checkpoint's state dict to segbench keys; see ``convert_with_report``."""
    converted, _ = convert_with_report(state_dict, source, arch, **model_options)
    return converted


def infer_num_classes(state_dict: dict[str, torch.Tensor]) -> int | None:
    """Number of classes of a converted segbench state dict, read off its final classifier if it has
    one (converters name it ``...classifier.weight`` by convention)."""
    for key in reversed(list(state_dict)):
        if key.endswith("classifier.weight") and not key.startswith("aux"):
            return int(state_dict[key].shape[0])
    return None
