"""Where each encoder's ImageNet weights come from (``IMAGENET_WEIGHTS``), and the verified, converted cache.

Rows, one per encoder (``url``, ``sha256``: full digest, the publisher's prefix, or None = unchecked,
``source``: the file's key layout, ``note``: where the digest comes from):

- ``resnet18/34/50/101``, ``vgg16``, ``vgg16_bn``, ``mobilenet_v3_large/small``, ``efficientnet_b0..b3``:
  torchvision's ``IMAGENET1K_V1`` files (EfficientNet's are Ross Wightman's, ``efficientnet_b*_rwightman``;
  MobileNetV3-Large's and EfficientNet-B1's ``IMAGENET1K_V2`` are newer recipes, not used: V1 is the file
  torchvision's segmentation models start from). torchvision publishes only the first 8 hex digits of each
  file's SHA-256, in the file name (what ``torch.hub``'s ``check_hash`` compares): the rows hold that
  prefix. Their keys are the encoders' own (``features.*``; the ImageNet ``classifier.*`` is dropped).
- ``mit_b0`` ... ``mit_b5``: Hugging Face ``nvidia/mit-b*`` (``SegformerForImageClassification``: NVlabs'
  ImageNet-1k weights as ported by Hugging Face), pinned to a revision so the file cannot change; full
  SHA-256 of ``pytorch_model.bin`` (the Hub's LFS digest, as recorded by independent projects).
- ``swin_t/s/b``: Microsoft's ``SwinTransformer/storage`` v1.0.0 release (ImageNet-1k, window 7, 224 px).
  Microsoft publishes no digest. Swin-T: the full SHA-256 several independent projects recorded for the
  file; Swin-S and Swin-B: unchecked (the digest is computed and reported, never compared).

Cache (``cache_dir()``: ``$SEGBENCH_HOME/weights``, default ``~/.cache/segbench/weights``): the published
file under ``filename``, and ``<encoder>.segbench.pt``: the encoder's tensors converted once to segbench's
keys, with the URL and digest they came from. Downloads go through ``torch.hub.download_url_to_file``
under a socket timeout (``SEGBENCH_DOWNLOAD_TIMEOUT`` seconds, default 60, so a stalled server cannot
hang a run) to a temporary name, renamed into place only once the digest matched.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from segbench.checkpoints.formats import encoder_keys
from segbench.env_settings import env_seconds
from segbench.models.registry import ENCODERS
from segbench.checkpoints.io import read_checkpoint

__all__ = [
    "IMAGENET_WEIGHTS", "ImageNetWeights", "WeightsUnavailableError", "HashMismatchError", "cache_dir", "fetch",
    "imagenet_state_dict", "verification",
]  # fmt: skip


@dataclass(frozen=True)
class ImageNetWeights:
    url: str
    filename: str  # the file's name in the cache (the URL's own, made unique where it is not)
    sha256: str | None  # full SHA-256 (64 hex digits), the publisher's prefix, or None: unchecked
    source: str  # the file's key layout: which segbench.checkpoints.convert converter applies
    note: str  # where the digest comes from


_TV_NOTE = "SHA-256 prefix from torchvision's file name (IMAGENET1K_V1); torchvision publishes no full digest"
_HF_NOTE = "full SHA-256 of pytorch_model.bin at this revision: the Hub's LFS digest, as independent projects pinned it"
_SWIN_NOTE = "full SHA-256 recorded by several independent projects (114,342,173 bytes); Microsoft publishes none"
_UNCHECKED = "unchecked: Microsoft publishes no digest and none was found"


def _torchvision(stem: str, prefix: str) -> ImageNetWeights:
    file = f"{stem}-{prefix}.pth"
    return ImageNetWeights(f"https://download.pytorch.org/models/{file}", file, prefix, "torchvision", _TV_NOTE)


def _hugging_face(size: str, revision: str, sha256: str) -> ImageNetWeights:
    url = f"https://huggingface.co/nvidia/mit-{size}/resolve/{revision}/pytorch_model.bin"
    return ImageNetWeights(url, f"mit-{size}-{revision[:8]}.bin", sha256, "hf", _HF_NOTE)


def _microsoft(file: str, sha256: str | None, note: str) -> ImageNetWeights:
    url = f"https://github.com/SwinTransformer/storage/releases/download/v1.0.0/{file}"
    return ImageNetWeights(url, file, sha256, "microsoft", note)


IMAGENET_WEIGHTS: dict[str, ImageNetWeights] = {
    "resnet18": _torchvision("resnet18", "f37072fd"),
    "resnet34": _torchvision("resnet34", "b627a593"),
    "resnet50": _torchvision("resnet50", "0676ba61"),
    "resnet101": _torchvision("resnet101", "63fe2227"),
    "vgg16": _torchvision("vgg16", "397923af"),
    "vgg16_bn": _torchvision("vgg16_bn", "6c64b313"),
    "mobilenet_v3_large": _torchvision("mobilenet_v3_large", "8738ca79"),
    "mobilenet_v3_small": _torchvision("mobilenet_v3_small", "047dcff4"),
    "efficientnet_b0": _torchvision("efficientnet_b0_rwightman", "7f5810bc"),
    "efficientnet_b1": _torchvision("efficientnet_b1_rwightman", "bac287d4"),
    "efficientnet_b2": _torchvision("efficientnet_b2_rwightman", "c35c1473"),
    "efficientnet_b3": _torchvision("efficientnet_b3_rwightman", "b3899882"),
    "mit_b0": _hugging_face("b0", "80983a413c30d36a39c20203974ae7807835e2b4", "4af8348c2a802bf76115d34797ff5ce1d9f110bb8593c22d9b66d8bd7fa227fc"),
    "mit_b1": _hugging_face("b1", "13ddceec4e8bdf401e7cd7acf5aebc526222518c", "980b86b60db37b1b1528086f6c53d253d879e9e09ebe07397b40fd275738a3bf"),
    "mit_b2": _hugging_face("b2", "3bb39e8739149c3777d0325349b2a6c32c6413db", "4500b5665471b593e6757e15bcca5034f433fe3902fe8ec2b7230774a57f264f"),
    "mit_b3": _hugging_face("b3", "0e0522cf0515903a0d35abc5adc9df78a25fde7c", "5670aa22de1b1848b1d715cc97d8fef77761701dedc8b3d3e44525fd71012896"),
    "mit_b4": _hugging_face("b4", "3844ddaa13d9ce98816bacb904688a5284f164af", "1cddf0f9ed0b7f1639a8f5e339c177673685df3e2e3c9575a649eb15bcf68a55"),
    "mit_b5": _hugging_face("b5", "40357155205b036cf11b61f132d53d2f8861f170", "a389c0a604458fa205446fd08a2c01b74e6591a5da3e77de668c6ca5cbf75356"),
    "swin_t": _microsoft("swin_tiny_patch4_window7_224.pth", "9f71c168d837d1b99dd1dc29e14990a7a9e8bdc5f673d46b04fe36fe15590ad3", _SWIN_NOTE),
    "swin_s": _microsoft("swin_small_patch4_window7_224.pth", None, _UNCHECKED),
    "swin_b": _microsoft("swin_base_patch4_window7_224.pth", None, _UNCHECKED),
}  # fmt: skip


class WeightsUnavailableError(RuntimeError):
    """The weights are not in the cache and could not be downloaded; the message says how to get them."""


class HashMismatchError(RuntimeError):
    """A file's SHA-256 differs from the published one; the message names both and the URL."""


def cache_dir() -> Path:
    """``$SEGBENCH_HOME/weights``, default ``~/.cache/segbench/weights``."""
    home = os.environ.get("SEGBENCH_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "segbench") / "weights"


def _download_timeout() -> float:
    return env_seconds("SEGBENCH_DOWNLOAD_TIMEOUT", 60.0)


def _entry(encoder: str) -> ImageNetWeights:
    if encoder not in IMAGENET_WEIGHTS:
        known = ", ".join(IMAGENET_WEIGHTS)
        raise KeyError(f"no ImageNet weights for encoder {encoder!r}; encoders with weights: {known}")
    return IMAGENET_WEIGHTS[encoder]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verification(entry: ImageNetWeights) -> str:
    """How the file was checked, for the report."""
    if entry.sha256 is None:
        return entry.note if entry.note.startswith("unchecked") else f"unchecked: {entry.note}"
    return "matches the full SHA-256" if len(entry.sha256) == 64 else f"matches the published prefix {entry.sha256}"


def _check(digest: str, entry: ImageNetWeights, what: str, advice: str) -> None:
    if entry.sha256 is not None and not digest.startswith(entry.sha256.lower()):
        kind = "SHA-256" if len(entry.sha256) == 64 else "a SHA-256 starting with"
        raise HashMismatchError(f"{what} has SHA-256 {digest}, expected {kind} {entry.sha256} ({entry.note}); "
                                f"URL: {entry.url}. {advice}")  # fmt: skip


def _unavailable(encoder: str, entry: ImageNetWeights, reason: str) -> WeightsUnavailableError:
    check = f"its SHA-256 must match {entry.sha256}" if entry.sha256 else "no published digest to check it against"
    return WeightsUnavailableError(
        f"ImageNet weights for encoder {encoder!r} are not in the cache and could not be downloaded ({reason}).\n"
        f"To work offline, download\n    {entry.url}\non a machine with network access and put it at\n"
        f"    {cache_dir() / entry.filename}\n({check}; SEGBENCH_HOME chooses another cache folder), or pass "
        f"pretrained='/path/to/{entry.filename}' to load a copy of the file directly."
    )


def fetch(encoder: str) -> tuple[Path, str]:
    """The published ImageNet file of ``encoder`` in the cache and its SHA-256, downloaded if absent.

    The download goes to a temporary name next to its destination and is renamed only once its digest
    matched, so an interrupted or corrupt transfer never leaves a file under the cache name."""
    entry = _entry(encoder)
    path = cache_dir() / entry.filename
    if path.is_file():
        digest = _sha256(path)
        _check(digest, entry, f"the cached file {path}", f"Delete it and download {entry.url} again.")
        return path, digest
    if os.environ.get("SEGBENCH_OFFLINE", "") not in ("", "0"):
        raise _unavailable(encoder, entry, "SEGBENCH_OFFLINE is set")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.download")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_download_timeout())  # bounds urllib's connect and every read
    try:
        try:
            torch.hub.download_url_to_file(entry.url, str(partial), progress=sys.stderr.isatty())
        except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, refused connections, short reads
            raise _unavailable(encoder, entry, f"{type(err).__name__}: {err}") from err
        digest = _sha256(partial)
        _check(digest, entry, f"the download of {entry.url}", "Nothing was written to the cache.")
        os.replace(partial, path)
    finally:
        socket.setdefaulttimeout(previous)
        partial.unlink(missing_ok=True)
    return path, digest


def imagenet_state_dict(encoder: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``encoder``'s ImageNet tensors in its own keys (before its ``adapt_state_dict`` and any
    ``in_channels`` adaptation) and their provenance (``url``, ``sha256``). Converted once from the
    published file and cached as ``<encoder>.segbench.pt``; later calls read only that file."""
    entry = _entry(encoder)
    converted = cache_dir() / f"{encoder}.segbench.pt"
    if converted.is_file():
        try:
            payload = torch.load(converted, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - empty (EOFError), garbage (UnpicklingError), truncated: converted again
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        if payload.get("url") == entry.url and payload.get("expected_sha256") == (entry.sha256 or ""):
            return payload["state_dict"], {"url": payload["url"], "sha256": payload["sha256"]}
    path, digest = fetch(encoder)
    state = encoder_keys(read_checkpoint(path), entry.source, ENCODERS[encoder].kind)
    # A view into a larger storage (a split or sliced tensor) is copied, or torch.save would write it whole.
    state = {k: v if v.untyped_storage().nbytes() == v.numel() * v.element_size() else v.clone()
             for k, v in state.items()}  # fmt: skip
    payload = {"encoder": encoder, "url": entry.url, "expected_sha256": entry.sha256 or "", "sha256": digest,
               "state_dict": state}  # fmt: skip
    temporary = converted.with_name(f".{converted.name}.{uuid.uuid4().hex}.tmp")
    try:
        torch.save(payload, temporary)
        os.replace(temporary, converted)
    except OSError as err:  # a read-only shared cache still serves the published file
        warnings.warn(f"could not cache the converted weights at {converted} ({err}); converting on every build")
    finally:
        temporary.unlink(missing_ok=True)
    return state, {"url": entry.url, "sha256": digest}
