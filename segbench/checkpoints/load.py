"""Pretrained weights by name, for every architecture: ``build_pretrained_model(arch, num_classes, pretrained=...)``
with ``pretrained="imagenet"`` or ``pretrained="/path/to/checkpoint"``.

``"imagenet"`` looks the model's encoder up in ``IMAGENET_WEIGHTS`` (``segbench.checkpoints.imagenet``,
one row per encoder: URL, SHA-256 or the publisher's prefix or None = unchecked, key layout):

- ResNet-18/34/50/101, VGG16, VGG16-BN, MobileNetV3-Large/Small, EfficientNet-B0..B3: torchvision's
  ``IMAGENET1K_V1`` files (download.pytorch.org), checked against the SHA-256 prefix torchvision puts in
  each file name;
- MiT-B0..B5: Hugging Face ``nvidia/mit-b0`` ... ``mit-b5`` at a pinned revision, full SHA-256;
- Swin-T/S/B: Microsoft's ``SwinTransformer/storage`` v1.0.0 release, ``swin_{tiny,small,base}_patch4_
  window7_224.pth``; Microsoft publishes no digest (Swin-T: a full SHA-256 recorded independently;
  Swin-S/B: unchecked, the digest is reported but not compared).

Cache: ``$SEGBENCH_HOME/weights`` (default ``~/.cache/segbench/weights``) holds each published file under
its own name and, converted once to segbench's keys, ``<encoder>.segbench.pt``; a build that finds the
latter never touches the network. Downloads time out after ``SEGBENCH_DOWNLOAD_TIMEOUT`` seconds without
data (default 60) and land in the cache only once their digest matched.

Offline: copy the cache folder of a machine that has used the weights; or download the row's URL
elsewhere and put the file at the path the error message names (``cache_dir() / row.filename``); or pass
``pretrained="/path/to/file"``. ``SEGBENCH_OFFLINE=1`` fails at once instead of trying the network.

A file path may hold a whole segmentation model or an encoder only, in segbench's layout or in
torchvision's, timm's, Microsoft's, NVlabs', Hugging Face's or MMSegmentation's: ``detect_format`` reads
the layout off the keys and ``segbench.checkpoints.convert`` converts it. Heads that do not fit (1000 ImageNet
classes, another label set) stay at their initialisation; an ``in_channels`` other than 3 adapts the
first convolution (the encoder's ``adapt_state_dict`` where it has one, else 1 channel = sum over RGB,
n channels = RGB repeated, scaled by 3/n). A backbone of another family, width or depth is refused
(a deeper file's first blocks are not another network's weights). ``model.pretrained_report`` says what
was loaded, adapted, skipped and left at its initialisation.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import re
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from segbench.checkpoints.formats import detect_format, encoder_keys
from segbench.checkpoints.imagenet import (
    IMAGENET_WEIGHTS, HashMismatchError, ImageNetWeights, WeightsUnavailableError, cache_dir, fetch,
    imagenet_state_dict, verification,
)  # fmt: skip
from segbench.checkpoints.io import read_checkpoint
from segbench.models.encoders.swin import SwinTransformer
from segbench.models.registry import ARCHITECTURES, ENCODERS, build_encoder, build_model, model_options

__all__ = [
    "LoadReport", "load_backbone_weights", "keys_beyond_model", "load_pretrained", "PretrainedReport", "IMAGENET_WEIGHTS", "ImageNetWeights", "WeightsUnavailableError",
    "HashMismatchError", "cache_dir", "fetch", "imagenet_state_dict", "detect_format", "imagenet_weights_fit",
]  # fmt: skip

StateDict = dict[str, Tensor]


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


def _classification_to_encoder(encoder: nn.Module, state: StateDict) -> StateDict:
    """A Swin ImageNet file (Microsoft's or timm's classification layout, or already the encoder's keys) in
    the encoder's keys, output norms the classifier lacks started at identity; other encoders' as given."""
    if not isinstance(encoder, SwinTransformer):
        return state
    from segbench.checkpoints.convert.swin import encoder_from_classification  # the converters import this module

    return {k.removeprefix("encoder."): v for k, v in encoder_from_classification(state).items()}


def load_backbone_weights(target: nn.Module, source: str | Path | dict) -> LoadReport:
    """Load backbone weights from a file or state dict into an encoder (or a model's ``.encoder``).

    The file uses the encoder's native key layout (torchvision for VGG/ResNet). Keys the encoder has
    no place for (an ImageNet classifier) are skipped; the encoder may adapt tensors first through
    its ``adapt_state_dict`` (e.g. FCN's fc6 takes VGG's first classifier layer reshaped to 7x7).
    Every encoder parameter must then be present: the load is strict on the encoder's side.
    """
    encoder = getattr(target, "encoder", target)
    state = source if isinstance(source, dict) else read_checkpoint(source)
    state = _classification_to_encoder(encoder, state)
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


@dataclass
class PretrainedReport(LoadReport):
    """What ``load_pretrained`` did. ``loaded``, ``adapted`` and ``missing`` (left at initialisation) are
    model keys; ``skipped`` are tensors of the (converted) file not loaded under their own name: dropped,
    or turned into an adapted tensor (VGG's classifier.0 becomes FCN's fc6)."""

    weights: str = ""  # "ImageNet resnet50" or the file's path
    layout: str = ""  # the declared or detected key layout: torchvision, hf, microsoft, segbench, ...
    scope: str = "encoder"  # "encoder" (backbone only) or "model" (a whole segmentation checkpoint)
    url: str = ""
    sha256: str = ""  # digest of the published file
    verification: str = ""
    adapted: list[str] = field(default_factory=list)  # derived or reshaped (another in_channels, fc6/fc7, ...)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def names(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f", ... ({len(keys) - 6} more)" if len(keys) > 6 else "")

        lines = [f"pretrained weights: {self.weights} ({self.layout} layout, {self.scope})"]
        if self.url:
            lines.append(f"  from {self.url}; sha256 {self.sha256} ({self.verification})")
        adapted = f" ({len(self.adapted)} adapted: {names(self.adapted)})" if self.adapted else ""
        lines.append(f"  loaded {len(self.loaded)} tensors{adapted}")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} tensors of the file: {names(self.skipped)}")
        if self.missing:
            lines.append(f"  left at initialisation {len(self.missing)} tensors: {names(self.missing)}")
        return "\n".join(lines + [f"  note: {note}" for note in self.notes])


def _shape(tensor: Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _first_conv(encoder: nn.Module) -> str:
    return next(name for name, m in encoder.named_modules() if isinstance(m, nn.Conv2d)) + ".weight"


def _fit_first_conv(state: StateDict, key: str, own: Tensor) -> StateDict:
    """An RGB first-conv weight reshaped for ``own``'s input channels (as the ResNet and Swin encoders'
    ``adapt_state_dict``: 1 channel = the sum over RGB; n = RGB repeated cyclically, scaled by 3/n)."""
    weight = state.get(key)
    if weight is None or weight.ndim != 4 or weight.shape[1] != 3 or own.shape[1] == 3:
        return state
    if weight.shape[0] != own.shape[0] or weight.shape[2:] != own.shape[2:]:
        return state  # not the same conv: the load reports the mismatch
    channels = own.shape[1]
    if channels == 1:
        return {**state, key: weight.sum(dim=1, keepdim=True)}
    return {**state, key: weight.repeat(1, -(-channels // 3), 1, 1)[:, :channels] * (3.0 / channels)}


def _encoder_label(model: nn.Module) -> str:
    name = model.encoder.registry_name
    return repr(name) if name else type(model.encoder).__name__


def _load(model: nn.Module, state: StateDict, report: PretrainedReport, file_shapes: dict[str, tuple]) -> None:
    """Load model-keyed ``state``: every encoder tensor must be there with its shape (a partial or
    mis-shaped backbone is the wrong backbone); head tensors that do not fit are skipped."""
    own = model.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}  # absent from older torchvision files
    wanted, wrong = {}, []
    for key, tensor in state.items():
        if key not in own:
            report.skipped.append(key)
        elif _shape(tensor) == _shape(own[key]):
            wanted[key] = tensor
        elif key.startswith("encoder."):
            wrong.append(f"{key}: file {_shape(tensor)} vs model {_shape(own[key])}")
        else:
            report.skipped.append(key)
            report.notes.append(f"{key} is {_shape(tensor)} in the file, {_shape(own[key])} in the model "
                                "(another label set?): left at its initialisation")  # fmt: skip
    absent = [k for k in own if k.startswith("encoder.") and k not in wanted and k not in optional]
    beyond = keys_beyond_model([k for k in state if k.startswith("encoder.")], own)  # a deeper backbone's
    if wrong or absent or beyond:
        raise ValueError(
            f"{report.weights} ({report.layout} layout) does not fit the model's encoder {_encoder_label(model)}: "
            f"{len(wrong)} shape mismatches (e.g. {wrong[:3]}), {len(absent)} encoder tensors absent from the file "
            f"(e.g. {absent[:3]}), {len(beyond)} tensors of the file (e.g. {beyond[:3]}) beyond the model's depth. "
            "Is it the right backbone and size? Models built with non-default widths or "
            "depths (slim test configurations) cannot take published weights."
        )
    model.load_state_dict(wanted, strict=False)
    report.loaded = list(wanted)
    report.adapted = [k for k in wanted if file_shapes.get(k) != _shape(wanted[k]) and k not in optional]
    report.missing = [k for k in own if k not in wanted and k not in optional]


def _load_encoder(model: nn.Module, native: StateDict, report: PretrainedReport) -> PretrainedReport:
    """Load a backbone given in the encoder's own keys, through its ``adapt_state_dict``."""
    encoder = model.encoder
    adapt = getattr(encoder, "adapt_state_dict", None)
    state = _classification_to_encoder(encoder, dict(native))
    state = adapt(state) if adapt is not None else state
    own = encoder.state_dict()
    first = _first_conv(encoder)
    state = _fit_first_conv(state, first, own[first])
    report.skipped = [k for k in native if k not in state or k not in own]
    beyond = set(keys_beyond_model(state, own))  # _load refuses them, naming them
    model_keyed = {f"encoder.{k}": v for k, v in state.items() if k in own or k in beyond}
    _load(model, model_keyed, report, {f"encoder.{k}": _shape(v) for k, v in native.items()})
    return report


def _load_whole(model: nn.Module, state: StateDict, report: PretrainedReport) -> PretrainedReport:
    first = "encoder." + _first_conv(model.encoder)
    _load(model, _fit_first_conv(state, first, model.state_dict()[first]), report,
          {k: _shape(v) for k, v in state.items()})  # fmt: skip
    return report


def _num_classes(model: nn.Module) -> int | None:
    heads = [m for n, m in model.named_modules()
             if n.endswith("classifier") and not n.startswith("aux") and isinstance(m, nn.Conv2d)]  # fmt: skip
    return heads[-1].out_channels if heads else None


def _load_file(model: nn.Module, path: Path, options: dict[str, Any]) -> PretrainedReport:
    from segbench.checkpoints.convert import CONVERTERS, _load_modules  # converters import this module

    state = read_checkpoint(path)
    layout = detect_format(state)
    name = model.encoder.registry_name
    family = ENCODERS[name].kind if name in ENCODERS else None
    report = PretrainedReport(weights=str(path), layout=layout[0] if layout else "unrecognised")
    if layout is None:  # the last guess: the encoder's own keys, as load_backbone_weights reads them
        try:
            backbone = load_backbone_weights(model, state)
        except (KeyError, ValueError) as err:
            raise ValueError(f"{path}: the key layout is not recognised (first keys: {list(state)[:4]}) and the "
                             f"file does not load as the encoder's own layout either: {err}") from err
        report.loaded = [f"encoder.{k}" for k in backbone.loaded]
        report.skipped = backbone.skipped
        report.missing = [k for k in model.state_dict() if not k.startswith("encoder.")]
        return report
    source, file_family, report.scope = layout
    if file_family is not None and family is not None and file_family != family:
        raise ValueError(f"{path} holds a {file_family} backbone ({source} layout), but the model's encoder is "
                         f"{name!r} ({family}); build the model with a {file_family} encoder")
    if source == "segbench":
        return _load_whole(model, state, report)
    arch = model.arch_name
    _load_modules()
    if report.scope == "model" and (source, arch) in CONVERTERS:
        if "encoder" not in options and name and "encoder" in model_options(arch):
            options = {**options, "encoder": name}
        try:
            converted = CONVERTERS[source, arch](state, num_classes=_num_classes(model), **options)
        except ValueError as err:  # a head segbench does not implement (e.g. MMSegmentation's ASPPHead)
            report.notes.append(f"the file's head does not map ({err}); only its backbone was loaded")
            warnings.warn(f"{path}: {report.notes[-1]}", stacklevel=4)
        else:
            report.notes.append(f"converted from the {source} layout by segbench.checkpoints.convert: {len(state)} tensors in "
                                f"the file, {len(converted)} in segbench's keys")  # fmt: skip
            return _load_whole(model, converted, report)
    elif report.scope == "model":
        report.notes.append(f"no {source} converter for {arch!r}'s head: only the backbone was loaded")
    report.scope = "encoder"
    backbone = encoder_keys(state, source, file_family)
    if source != "torchvision":
        report.notes.append(f"converted from the {source} layout by segbench.checkpoints.convert: {len(state)} tensors in the "
                            f"file, {len(backbone)} backbone tensors in the encoder's keys")  # fmt: skip
    return _load_encoder(model, backbone, report)


def _encoder_name(model: nn.Module, options: dict[str, Any]) -> str | None:
    name = model.encoder.registry_name or options.get("encoder")
    arch = model.arch_name
    if name is None and arch in ARCHITECTURES:
        name = model_options(arch).get("encoder")
    return name


def _no_imagenet_weights(model: nn.Module, name: str | None) -> ValueError:
    arch = (model.arch_name or type(model).__name__)
    archs = [f"{a} (encoder={model_options(a)['encoder']!r})" for a in ARCHITECTURES
             if model_options(a).get("encoder") in IMAGENET_WEIGHTS]  # fmt: skip
    what = f"encoder {name!r}" if name else f"its own encoder ({type(model.encoder).__name__})"
    return ValueError(
        f"pretrained='imagenet': {arch!r} uses {what}, which has no public ImageNet weights. Encoders with "
        f"ImageNet weights: {', '.join(IMAGENET_WEIGHTS)}; architectures built on them: {', '.join(archs)}. "
        "Or pass pretrained='/path/to/checkpoint'."
    )


def load_pretrained(
    model: nn.Module, pretrained: str | os.PathLike | None, *, options: dict[str, Any] | None = None
) -> PretrainedReport | None:
    """Load ``pretrained`` into ``model`` (which has an ``encoder``): None (nothing), ``"imagenet"`` (the
    encoder's published ImageNet weights) or a checkpoint file in any layout ``detect_format`` knows.
    ``options`` are the model's build options (``build_model`` passes them): converters of whole
    segmentation checkpoints rebuild the target from them."""
    if pretrained is None:
        return None
    if not hasattr(model, "encoder"):
        raise TypeError(f"{type(model).__name__} has no 'encoder' attribute to load pretrained weights into")
    options = dict(options or {})
    if isinstance(pretrained, str) and pretrained.lower() == "imagenet":
        name = _encoder_name(model, options)
        if name not in IMAGENET_WEIGHTS:
            raise _no_imagenet_weights(model, name)
        state, provenance = imagenet_state_dict(name)
        row = IMAGENET_WEIGHTS[name]
        report = PretrainedReport(weights=f"ImageNet {name}", layout=row.source, url=provenance["url"],
                                  sha256=provenance["sha256"], verification=verification(row))  # fmt: skip
        return _load_encoder(model, state, report)
    if not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(f"pretrained must be None, 'imagenet' or a file path, got {pretrained!r}")
    path = Path(pretrained).expanduser()
    if path.is_dir():  # a Hugging Face snapshot folder
        path = next((path / f for f in ("model.safetensors", "pytorch_model.bin") if (path / f).is_file()), path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained={str(pretrained)!r}: no such file (valid values: None, 'imagenet', a "
                                "checkpoint file, or a folder holding model.safetensors or pytorch_model.bin)")
    return _load_file(model, path, options)


def imagenet_weights_fit(arch: str, options: dict[str, Any] | None = None) -> tuple[bool, str]:
    """Whether ``build_pretrained_model(arch, ..., pretrained="imagenet", **options)`` can take its encoder's published
    ImageNet weights, and why (one line, for the sweep's log). Nothing is downloaded or allocated.

    The published files hold the encoders' default configurations, so the model (with ``options``) and
    its encoder at default options are built on the meta device and their tensors compared: every tensor
    of the default encoder must be in the model's encoder with the same shape, except that the first
    convolution may differ in its input channels (``load_pretrained`` adapts it). Tensors only the model's
    encoder has are allowed where its ``adapt_state_dict`` derives them from the file (FCN's and DeepLab
    v1's fc6/fc7 from VGG's ImageNet classifier); slim widths or depths (the ``quick`` profile's width-16
    VGG, its 2-2-2-2 half-width Swin) fail the comparison and train from scratch."""
    options = dict(options or {})
    with torch.device("meta"):
        model = build_model(arch, 2, **options)
    name = model.encoder.registry_name
    if name is None:
        return False, f"{arch} has its own encoder ({type(model.encoder).__name__}), with no published ImageNet weights"
    if name not in IMAGENET_WEIGHTS:
        known = ", ".join(IMAGENET_WEIGHTS)
        return False, f"{arch}'s encoder {name!r} has no ImageNet weights segbench fetches yet (those with: {known})"
    with torch.device("meta"):
        reference = build_encoder(name)
    own, published = model.encoder.state_dict(), reference.state_dict()
    first = _first_conv(reference)
    absent = [k for k in published if k not in own]
    wrong = [
        f"{k}: model {_shape(own[k])}, published {_shape(v)}" for k, v in published.items()
        if k in own and _shape(own[k]) != _shape(v)
        and not (k == first and _shape(own[k])[:1] + _shape(own[k])[2:] == _shape(v)[:1] + _shape(v)[2:])
    ]  # fmt: skip
    extra = [k for k in own if k not in published and not k.endswith("num_batches_tracked")]
    if wrong or absent:
        why = [f"{len(wrong)} tensor shapes differ (e.g. {wrong[0]})"] if wrong else []
        why += [f"{len(absent)} of its tensors are not in the model (e.g. {absent[0]})"] if absent else []
        return False, (f"{arch} with options {options or 'default'} changes encoder {name!r} from the published "
                       f"configuration: {'; '.join(why)}")  # fmt: skip
    if extra and getattr(model.encoder, "adapt_state_dict", None) is None:
        return False, f"{arch}'s encoder {name!r} has tensors the published weights lack (e.g. {extra[0]})"
    derived = f"; {len(extra)} tensors derived from the file by the encoder's adapt_state_dict" if extra else ""
    return True, f"{arch}: encoder {name!r} matches its published ImageNet configuration{derived}"
