"""Weights from other toolkits: map their checkpoints' keys onto segbench's.

``convert(state_dict, source, arch, **model_options)`` returns a segbench-keyed state dict for
``build_model(arch, **model_options)``. Converters are registered per (source, architecture) by the
modules below, one per model family; ``convert`` builds the target model to compare keys and shapes
and reports what was missing or unexpected.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["CheckpointError", "load_torch_file", "read_checkpoint", "unwrap_state_dict", "SOURCES", "ConversionReport", "register_converter", "convert", "convert_with_report", "CONVERTERS"]

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


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: empty, truncated, not a torch file, or holding code."""


def load_torch_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, with one line naming the file when it cannot be read.

    torch's own messages run to a dozen lines and advise retrying with ``weights_only=False``, which
    would execute whatever the file holds: never print that advice to a user."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except EOFError:  # click would print a bare "Aborted!" for it
        raise CheckpointError(f"{path} is empty ({path.stat().st_size} bytes): not a checkpoint; "
                              "write it again (train again, or download it again)") from None
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err) or "weights_only" in str(err) and "GLOBAL" in str(err):
            reason = "it holds Python objects other than tensors, which segbench never unpickles"
        else:
            reason = "it is not a torch checkpoint (garbage or another format)"
        raise CheckpointError(f"{path} cannot be read as a checkpoint: {reason}; use the original file") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError):  # these name the file already
        raise
    except Exception as err:  # noqa: BLE001 - torch's unpickler fails on damaged bytes in many ways
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} cannot be read as a checkpoint (truncated or damaged: {first.split('. ')[0]}); "
                              "use a complete copy, or train again") from None


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file: ``.safetensors`` (needs the safetensors package) or a torch
    pickle read with ``weights_only=True``; the usual wrappers ``{"state_dict": ...}`` (MMSeg, Lightning)
    and ``{"model": ...}`` (Swin, DeiT releases) are unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ImportError(f"{path} is a safetensors file: pip install safetensors to read it") from err
        return load_file(str(path))
    state = load_torch_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return unwrap_state_dict(state)


def unwrap_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint dict: inside ``{"state_dict": ...}`` (MMSeg, Lightning) or
    ``{"model": ...}`` (Swin, DeiT releases), without DataParallel's ``module.`` prefix."""
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_modules() -> None:
    from segbench.weights import cnn, segformer, swin  # noqa: F401  (registration)


def convert_with_report(
    state_dict: dict[str, torch.Tensor], source: str, arch: str, num_classes: int | None = None, **model_options: Any
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Convert and compare against ``build_model(arch, num_classes, **model_options)``."""
    from segbench.registry import build_model

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
