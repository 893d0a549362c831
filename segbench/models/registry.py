"""The two registries: architectures (whole segmentation models) and encoders (backbones).

Builders are plain keyword-only functions registered with a decorator. ``build_model`` and
``build_encoder`` check the options a caller passes against the builder's signature, so a typo
fails loudly with the list of valid names instead of being swallowed by ``**kwargs``.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from segbench.models.blocks import SegmentationModel

__all__ = [
    "ARCHITECTURES",
    "ENCODERS",
    "ModelEntry",
    "EncoderEntry",
    "register_model",
    "register_encoder",
    "build_model",
    "build_encoder",
    "list_models",
    "list_encoders",
    "model_options",
]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    paper: str  # e.g. "Long, Shelhamer, Darrell. Fully Convolutional Networks ... CVPR 2015"
    year: int
    recipe: str  # "cnn" or "transformer": the papers whose optimiser defaults it trains with (engine.optim)
    summary: str = ""  # one line: the main innovation
    # The review's text (README, docs, report): what each building block does well and badly.
    blocks: str = ""
    strengths: str = ""
    weaknesses: str = ""


@dataclass(frozen=True)
class EncoderEntry:
    name: str
    builder: Callable[..., nn.Module]
    kind: str  # "vgg", "resnet", "mit", "swin": which published weights and key layouts fit it
    defaults: dict[str, Any] = field(default_factory=dict)


ARCHITECTURES: dict[str, ModelEntry] = {}
ENCODERS: dict[str, EncoderEntry] = {}


def register_model(
    name: str,
    *,
    paper: str,
    year: int,
    recipe: str,
    summary: str = "",
    blocks: str = "",
    strengths: str = "",
    weaknesses: str = "",
):
    """Decorator: register ``fn(*, num_classes, in_channels=3, **options) -> nn.Module``."""
    if recipe not in ("cnn", "transformer"):
        raise ValueError(f"recipe must be 'cnn' or 'transformer', got {recipe!r}")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in ARCHITECTURES:
            raise ValueError(f"architecture {name!r} registered twice")
        ARCHITECTURES[name] = ModelEntry(name, fn, paper, year, recipe, summary, blocks, strengths, weaknesses)
        return fn

    return decorator


def register_encoder(name: str, *, kind: str, **defaults: Any):
    """Decorator: register ``fn(*, in_channels=3, **options) -> Encoder``.

    ``defaults`` are bound when the same builder serves several names (``resnet18`` ...
    ``resnet101`` share one function with a different ``depth``).
    """

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in ENCODERS:
            raise ValueError(f"encoder {name!r} registered twice")
        ENCODERS[name] = EncoderEntry(name, fn, kind, dict(defaults))
        return fn

    return decorator


def _ensure_loaded() -> None:
    # Importing the packages runs the decorators.
    import segbench.models.architectures  # noqa: F401
    import segbench.models.encoders  # noqa: F401


def _lookup(table: dict, name: str, what: str):
    _ensure_loaded()
    if name not in table:
        hint = difflib.get_close_matches(name, table, n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise KeyError(f"unknown {what} {name!r}.{did_you_mean} Valid names: {', '.join(sorted(table))}")
    return table[name]


def _keyword_options(fn: Callable) -> dict[str, inspect.Parameter]:
    params = inspect.signature(fn).parameters
    return {n: p for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _check_options(fn: Callable, options: dict[str, Any], what: str, reserved: tuple[str, ...]) -> None:
    valid = [n for n in _keyword_options(fn) if n not in reserved]
    unknown = [k for k in options if k not in valid]
    if unknown:
        parts = []
        for key in unknown:
            hint = difflib.get_close_matches(key, valid, n=1)
            parts.append(f"{key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        raise TypeError(f"unknown option(s) for {what}: {', '.join(parts)}. Valid options: {', '.join(valid)}")


def model_options(name: str) -> dict[str, Any]:
    """The options ``build_model(name, ...)`` accepts, with their defaults."""
    entry = _lookup(ARCHITECTURES, name, "architecture")
    return {
        n: (None if p.default is inspect.Parameter.empty else p.default)
        for n, p in _keyword_options(entry.builder).items()
        if n not in ("num_classes", "in_channels")
    }


def build_model(name: str, num_classes: int, in_channels: int = 3, **options: Any) -> nn.Module:
    """Build a registered architecture with random weights. Unknown names or options raise an error
    listing the valid ones. (``segbench.build_pretrained_model`` builds with this function, then loads
    ``pretrained`` weights.)"""
    entry = _lookup(ARCHITECTURES, name, "architecture")
    if "pretrained" in options:  # not an option of any architecture: the weights are loaded by segbench.checkpoints
        raise TypeError(f"build_model builds random weights and takes no 'pretrained'; "
                        f"segbench.build_pretrained_model({name!r}, ..., pretrained=...) builds and loads them")
    _check_options(entry.builder, options, f"architecture {name!r}", ("num_classes", "in_channels"))
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model = entry.builder(num_classes=num_classes, in_channels=in_channels, **options)
    if not isinstance(model, SegmentationModel):
        raise TypeError(f"architecture {name!r} built a {type(model).__name__}, not a segbench.models.blocks.SegmentationModel")
    model.arch_name = name  # declared by SegmentationModel, as is ``recipe`` (set here unless the model refined it)
    model.recipe = model.recipe or entry.recipe
    return model


def build_encoder(name: str, **options: Any) -> nn.Module:
    """Build a registered encoder (see ``segbench.models.encoders`` for the contract)."""
    entry = _lookup(ENCODERS, name, "encoder")
    _check_options(entry.builder, options, f"encoder {name!r}", tuple(entry.defaults))
    encoder = entry.builder(**entry.defaults, **options)
    encoder.registry_name = name  # declared by Encoder: which published weights fit it (segbench.checkpoints)
    return encoder


def model_recipe(model: nn.Module, arch: str) -> str:
    """The optimiser recipe a built model follows: its own ``recipe`` where it refines its architecture's
    (UPerNet on a ResNet follows the CNN papers; ``build_model`` fills in the registry's otherwise)."""
    return model.recipe or ARCHITECTURES[arch].recipe


def list_models() -> list[str]:
    _ensure_loaded()
    return list(ARCHITECTURES)


def list_encoders() -> list[str]:
    _ensure_loaded()
    return list(ENCODERS)
