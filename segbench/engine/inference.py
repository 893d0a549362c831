"""Inference: whole-image or sliding-window, with optional flip test-time augmentation.

Sliding window (MMSegmentation's ``slide`` mode; nnU-Net's Gaussian weighting): windows of
``window`` pixels step by ``window * (1 - overlap)`` so the last window touches the far border;
the logits of overlapping windows are blended with a constant ("mean") or Gaussian weight map
(sigma = window / 8, nnU-Net), which trusts each window's centre more than its borders.
Flip TTA and ensembles (``predict_scores``) average softmax probabilities: over every combination of the
named flips (nnU-Net's mirroring), each flipped back, and over every member of an ensemble.

The network itself (``inference_network``) is the trained one made cheaper without changing what it
computes: an eval-mode copy with its BatchNorms folded into the convolutions before them
(:mod:`segbench.models.fold`: the same function up to float rounding), and, under autocast, the weights of
its convolutions and linear layers stored in the autocast dtype. Autocast casts exactly those weights to
that dtype on every call, so storing them cast gives bit-identical outputs (checked on the probe) without
the copies (measured here: 2-3% of a bf16 forward of FCN-ResNet50, UPerNet-Swin, SegFormer). ``segbench
predict`` and every inference time segbench reports use it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from segbench.engine.device import Precision
from segbench.models.fold import Folded, fold_batchnorm, output_tensors

__all__ = ["InferenceSettings", "tta_flips", "flip_views", "network_logits", "predict_scores", "sliding_window_logits",
           "window_positions", "gaussian_weights",
           "InferenceNetwork", "inference_network"]

# The layers whose weights autocast casts to its dtype on every call (lower-precision ops on CPU and CUDA).
AUTOCAST_CAST_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                        nn.Linear)


@dataclass
class InferenceNetwork:
    """The network segbench infers with (run it under ``precision.autocast()``), and what was done to it."""

    model: nn.Module
    fold: Folded
    stored_in: str = ""  # the autocast dtype the conv/linear weights are stored in ('' when kept in fp32)
    note: str = ""  # why they were kept, when autocast is on

    def describe(self) -> str:
        stored = (f"; convolution and linear weights stored in {self.stored_in} (as autocast casts them)"
                  if self.stored_in else f"; {self.note}" if self.note else "")
        return self.fold.describe() + stored


def inference_network(model: nn.Module, example: Tensor, precision: Precision) -> InferenceNetwork:
    """An eval-mode copy of ``model`` with BatchNorm folded and, under autocast, conv/linear weights
    stored in its dtype, both read off and checked on ``example`` (see the module docstring); ``model``
    itself is left as it was."""
    fold = fold_batchnorm(model, example)
    if precision.dtype is None:
        return InferenceNetwork(fold.model, fold)
    stored = copy.deepcopy(fold.model)
    for module in stored.modules():
        if isinstance(module, AUTOCAST_CAST_LAYERS):
            module.to(precision.dtype)
    with torch.inference_mode(), precision.autocast():
        same = all(torch.equal(a, b)
                   for a, b in zip(output_tensors(fold.model(example)), output_tensors(stored(example))))
    if not same:
        return InferenceNetwork(fold.model, fold, note=f"weights kept in fp32: storing them in {precision.name} changed "
                                                       "the output on the probe")
    return InferenceNetwork(stored, fold, stored_in=precision.name)



@dataclass(frozen=True)
class InferenceSettings:
    mode: str = "whole"  # "whole" or "slide"
    window: tuple[int, int] | None = None  # slide: window (H, W) in pixels
    overlap: float = 0.5  # slide: fraction of a window shared with its neighbour, in [0, 1)
    blend: str = "gaussian"  # slide: "gaussian" or "mean"
    flips: tuple[str, ...] = ()  # TTA: any of "horizontal", "vertical"
    batch_size: int = 8  # slide: windows per forward pass

    def __post_init__(self):
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"inference mode must be 'whole' or 'slide', got {self.mode!r}")
        if self.mode == "slide" and not self.window:
            raise ValueError("sliding-window inference needs a window size, e.g. eval.window=[256, 256]")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.blend not in ("gaussian", "mean"):
            raise ValueError(f"blend must be 'gaussian' or 'mean', got {self.blend!r}")
        unknown = set(self.flips) - {"horizontal", "vertical"}
        if unknown:
            raise ValueError(f"unknown flip(s) {sorted(unknown)}; valid: 'horizontal', 'vertical'")


def window_positions(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets along one axis: a regular grid whose last window ends exactly at ``size``."""
    if window >= size:
        return [0]
    stride = max(1, math.ceil(window * (1 - overlap)))
    count = math.ceil((size - window) / stride) + 1
    return [min(i * stride, size - window) for i in range(count)]


def gaussian_weights(height: int, width: int, sigma_scale: float = 1 / 8) -> Tensor:
    """Gaussian importance map peaking at the window centre, normalised to max 1, floored above 0."""
    axes = []
    for n in (height, width):
        coords = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
        axes.append(torch.exp(-0.5 * (coords / max(n * sigma_scale, 1e-6)) ** 2))
    weights = axes[0][:, None] * axes[1][None, :]
    weights = weights / weights.max()
    return weights.clamp_min(1e-3)


def _forward(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    return out["out"] if isinstance(out, dict) else out


@torch.no_grad()
def sliding_window_logits(model: nn.Module, image: Tensor, settings: InferenceSettings) -> Tensor:
    """Logits (N, C, H, W) of ``image`` (N, Cin, H, W) assembled from overlapping windows."""
    n, _, height, width = image.shape
    win_h, win_w = min(settings.window[0], height), min(settings.window[1], width)
    tops = window_positions(height, win_h, settings.overlap)
    lefts = window_positions(width, win_w, settings.overlap)
    boxes = [(t, l) for t in tops for l in lefts]
    if settings.blend == "gaussian":
        weight = gaussian_weights(win_h, win_w).to(image.device)
    else:
        weight = torch.ones(win_h, win_w, device=image.device)
    logits = None
    total_weight = torch.zeros(height, width, device=image.device)
    for start in range(0, len(boxes), settings.batch_size):
        chunk = boxes[start : start + settings.batch_size]
        crops = torch.cat([image[:, :, t : t + win_h, l : l + win_w] for t, l in chunk])
        out = _forward(model, crops).float()
        if logits is None:
            logits = torch.zeros(n, out.shape[1], height, width, device=image.device)
        for k, (t, l) in enumerate(chunk):
            logits[:, :, t : t + win_h, l : l + win_w] += out[k * n : (k + 1) * n] * weight
            total_weight[t : t + win_h, l : l + win_w] += weight
    return logits / total_weight


def tta_flips(volumetric: bool) -> tuple[str, ...]:
    """The flips TTA uses by default (``--tta``): both in-plane axes for slices of volumes (nnU-Net mirrors
    every axis; a mirrored axial slice is still an axial slice), horizontal only for 2D images (a photograph
    upside down is not a photograph). Any other choice: ``eval.flips``."""
    return ("horizontal", "vertical") if volumetric else ("horizontal",)


def flip_views(flips: tuple[str, ...]) -> list[tuple[int, ...]]:
    """The flipped views flip TTA predicts: every combination of the named flips (nnU-Net's mirroring), the
    image itself first, as the dims to flip. ``("horizontal", "vertical")`` gives 4 views: as is,
    horizontal, vertical, and both (a 180-degree rotation)."""
    dims_of = {"horizontal": -1, "vertical": -2}
    axes = [dims_of[flip] for flip in dict.fromkeys(flips)]  # each flip once, in the order named
    return [tuple(a for bit, a in enumerate(axes) if mask >> bit & 1) for mask in range(2 ** len(axes))]


@torch.no_grad()
def network_logits(model: nn.Module, image: Tensor, settings: InferenceSettings = InferenceSettings()) -> Tensor:
    """One network's logits (N, C, H, W) for one view of a batch: the whole image or sliding windows, no TTA."""
    if settings.mode == "slide":
        return sliding_window_logits(model, image, settings)
    return _forward(model, image).float()


@torch.no_grad()
def predict_scores(models: nn.Module | Sequence[nn.Module], image: Tensor,
                   settings: InferenceSettings = InferenceSettings()) -> Tensor:
    """Per-class scores (N, C, H, W) whose arg-max over C is the prediction, by the mode, TTA and ensemble asked.

    ``models``: one network, or the members of an ensemble (the same classes, the same input). One network
    without flips: its logits (``network_logits``). Otherwise the mean, over every member and every flipped
    view (``flip_views``, each flipped back), of the softmax probabilities: nnU-Net's ensembling of
    probabilities, here also for the flips. So an ensemble of k members with f flips runs k * 2^f forward
    passes (times the windows in slide mode). The models should be in eval mode; the caller chooses device
    and autocast.
    """
    members = [models] if isinstance(models, nn.Module) else list(models)
    if not members:
        raise ValueError("predict_scores needs at least one model")
    views = flip_views(settings.flips)
    if len(members) == 1 and len(views) == 1:
        return network_logits(members[0], image, settings)
    total = None
    for model in members:
        for dims in views:
            view = image.flip(dims) if dims else image
            probabilities = network_logits(model, view, settings).softmax(1)
            probabilities = probabilities.flip(dims) if dims else probabilities
            total = probabilities if total is None else total + probabilities
    return total / (len(members) * len(views))
