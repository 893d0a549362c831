"""Mean-field CRF inference on a local window (ConvCRF, Teichmann & Cipolla, BMVC 2019 / arXiv 2018),
the GPU-friendly stand-in for the fully connected CRF that DeepLab applies to its scores (Chen et al.
ICLR 2015, Sec. 4; Krähenbühl & Koltun, NIPS 2011).

The model. Each pixel i takes a label; the energy is the unary -log P_i(l) from the network plus
pairwise Potts terms ``mu(l, l') = [l != l']`` weighted by two Gaussian kernels on pixel features
(as in Krähenbühl & Koltun and DeepLab Sec. 4):

    k(i, j) = w_appearance * exp(-|p_i - p_j|^2 / (2 theta_alpha^2) - |I_i - I_j|^2 / (2 theta_beta^2))
            + w_smoothness * exp(-|p_i - p_j|^2 / (2 theta_gamma^2))

with positions p in pixels and colours I in the image's intensity units. Mean-field updates (Krähenbühl
& Koltun, Alg. 1) with Potts compatibility reduce to ``Q = softmax(logits + sum_j k(i, j) Q_j)``: a pixel's
label is pulled towards the labels of pixels that are close and similar in colour.

Why a local window. The fully connected CRF sums over *all* pixel pairs, which is only tractable with
permutohedral-lattice filtering (Adams et al. 2010), a CPU C++ library with no PyTorch equivalent
(``dense_crf.DenseCRF`` runs it through the optional pydensecrf2; DeepLab's ``crf="dense"``). ConvCRF
assumes pixels farther apart than ``window // 2`` (Chebyshev distance) are conditionally independent, so
each message is a locally connected convolution that runs anywhere PyTorch runs. The price: with DeepLab's
``theta_alpha`` of 50-100 pixels, the appearance kernel of the dense CRF reaches far across an object,
whereas here it stops at the window edge (7x7 or 11x11); within such a window its spatial factor is nearly
1, so the appearance term acts as a colour-gated local smoother. Label information still travels
``window // 2`` pixels per iteration, so more iterations widen the reach. Teichmann & Cipolla report the
local version two orders of magnitude faster than the permutohedral dense CRF on a GPU and, in their
experiments, at least as accurate. Measured here (docs/crf.md): a straight boundary misplaced inside one
colour region moves back to the colour edge only if it is within ``window // 2`` pixels; on an idle CPU
ConvCRF is the cheaper of the two (2-9x), though its threads stall beside busy cores where the dense CRF's
single-threaded lattice does not.

Not normalised. Like ConvCRF's reference code, messages are sums over the window, so the weights act
``window**2 - 1`` times over; Krähenbühl's code (and so DeepLab's published weights) divides each message
by ``sum_j k(i, j)``. The two sets of kernel values are not interchangeable.

Image units. ``theta_beta`` is compared with raw colour differences. DeepLab's values (3-13) assume RGB in
0..255. For a normalised input ``(x / 255 - mean) / std``, colour differences shrink by ``255 * std``:
pass ``image * 255 * std`` (ImageNet: std ~ 0.226, so ~57.6); the mean does not matter, only differences
enter. Any number of channels is accepted (the distance is summed over channels).
"""

from __future__ import annotations

import difflib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CRF_KINDS", "MeanFieldCRF", "ConvCRF", "build_crf", "crf_kind", "check_mean_field"]


def check_mean_field(iterations: int, theta_alpha: float, theta_beta: float, theta_gamma: float) -> None:
    """The settings both CRFs share (``ConvCRF``, ``dense_crf.DenseCRF``): ValueError naming the bad one."""
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if min(theta_alpha, theta_beta, theta_gamma) <= 0:
        raise ValueError(
            f"theta_alpha, theta_beta, theta_gamma must be > 0, got {theta_alpha}, {theta_beta}, {theta_gamma}"
        )

# DeepLab v1/v2's CRF post-processing: none, ConvCRF (this file), or the fully connected CRF (dense_crf.py).
CRF_KINDS = ("none", "conv", "dense")


class MeanFieldCRF(nn.Module):
    """What both CRFs share (``ConvCRF``, ``dense_crf.DenseCRF``): the Potts model's kernel settings, checked
    (``check_mean_field``), and the input rules of ``forward(logits, image)``."""

    def __init__(self, iterations: int, theta_alpha: float, theta_beta: float, theta_gamma: float,
                 w_appearance: float, w_smoothness: float):
        super().__init__()
        check_mean_field(iterations, theta_alpha, theta_beta, theta_gamma)
        self.iterations = iterations
        self.theta_alpha = float(theta_alpha)
        self.theta_beta = float(theta_beta)
        self.theta_gamma = float(theta_gamma)
        self.w_appearance = float(w_appearance)
        self.w_smoothness = float(w_smoothness)

    def kernel_repr(self) -> str:
        return (f"theta_alpha={self.theta_alpha}, theta_beta={self.theta_beta}, theta_gamma={self.theta_gamma}, "
                f"w_appearance={self.w_appearance}, w_smoothness={self.w_smoothness}")

    def leaves_unchanged(self, logits: Tensor, image: Tensor) -> bool:
        """Check that ``logits`` (N, C, H, W) and ``image`` (N, channels, H, W) agree (ValueError naming both
        shapes); True when the CRF leaves the logits unchanged (zero iterations, or both weights zero)."""
        if logits.ndim != 4 or image.ndim != 4:
            raise ValueError(
                f"logits and image must be (N, C, H, W); got {tuple(logits.shape)} and {tuple(image.shape)}"
            )
        if image.shape[0] != logits.shape[0] or image.shape[-2:] != logits.shape[-2:]:
            raise ValueError(
                f"image {tuple(image.shape)} must match logits {tuple(logits.shape)} in batch size and H, W"
            )
        return self.iterations == 0 or (self.w_appearance == 0 and self.w_smoothness == 0)


class ConvCRF(MeanFieldCRF):
    """Mean-field inference of a Potts CRF with Gaussian appearance and smoothness kernels, restricted to
    a ``window x window`` neighbourhood. No learnable parameters.

    Args:
        iterations: mean-field iterations (DeepLab uses 10; ConvCRF 5).
        window: odd neighbourhood size in pixels (e.g. 7 or 11).
        theta_alpha: spatial standard deviation of the appearance kernel, in pixels.
        theta_beta: colour standard deviation of the appearance kernel, in image intensity units.
        theta_gamma: spatial standard deviation of the smoothness kernel, in pixels.
        w_appearance, w_smoothness: kernel weights; both 0 makes the CRF the identity.
    """

    def __init__(
        self,
        iterations: int = 5,
        window: int = 7,
        theta_alpha: float = 80,
        theta_beta: float = 13,
        theta_gamma: float = 3,
        w_appearance: float = 10,
        w_smoothness: float = 3,
    ):
        super().__init__(iterations, theta_alpha, theta_beta, theta_gamma, w_appearance, w_smoothness)
        if window < 3 or window % 2 == 0:
            raise ValueError(f"window must be an odd size >= 3 (e.g. 7 or 11), got {window}")
        self.window = window
        radius = window // 2
        # Every neighbour offset except the pixel itself (the sum in the mean-field update is over j != i).
        self._offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1) if dy or dx]

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}, window={self.window}, {self.kernel_repr()}"

    def pairwise_kernel(self, image: Tensor) -> Tensor:
        """k(i, i + offset) for every pixel and offset: (N, window**2 - 1, H, W)."""
        radius = self.window // 2
        h, w = image.shape[-2:]
        padded = F.pad(image, (radius, radius, radius, radius))
        kernels = []
        for dy, dx in self._offsets:
            distance2 = float(dy * dy + dx * dx)
            neighbour = padded[:, :, radius + dy : radius + dy + h, radius + dx : radius + dx + w]
            colour2 = (image - neighbour).square().sum(dim=1, keepdim=True)
            appearance = torch.exp(-distance2 / (2 * self.theta_alpha**2) - colour2 / (2 * self.theta_beta**2))
            smoothness = math.exp(-distance2 / (2 * self.theta_gamma**2))
            kernels.append(self.w_appearance * appearance + self.w_smoothness * smoothness)
        return torch.cat(kernels, dim=1)

    def message(self, q: Tensor, kernel: Tensor) -> Tensor:
        """sum_j k(i, j) Q_j(l) over the window, for every label l. Neighbours outside the image have
        Q = 0 (zero padding), so they send nothing."""
        radius = self.window // 2
        h, w = q.shape[-2:]
        padded = F.pad(q, (radius, radius, radius, radius))
        out = torch.zeros_like(q)
        for k, (dy, dx) in enumerate(self._offsets):
            neighbour = padded[:, :, radius + dy : radius + dy + h, radius + dx : radius + dx + w]
            out = out + kernel[:, k : k + 1] * neighbour
        return out

    def forward(self, logits: Tensor, image: Tensor) -> Tensor:
        """Refine ``logits`` (N, C, H, W) with the guidance ``image`` (N, channels, H, W).

        Returns the logits of the final mean-field marginals, ``logits + messages``: their softmax is Q.
        With zero weights or zero iterations it returns ``logits`` unchanged.
        """
        if self.leaves_unchanged(logits, image):
            return logits
        kernel = self.pairwise_kernel(image.to(logits.dtype))
        refined = logits
        for _ in range(self.iterations):
            refined = logits + self.message(refined.softmax(dim=1), kernel)
        return refined


def crf_kind(value: str | bool) -> str:
    """The CRF a DeepLab builder's ``crf`` option names: ``none``, ``conv`` or ``dense``. ``True`` and
    ``False`` (the option's values before ``dense`` existed, kept in saved configs) mean ``conv`` and ``none``."""
    if isinstance(value, bool):
        return "conv" if value else "none"
    if value not in CRF_KINDS:
        hint = difflib.get_close_matches(str(value), CRF_KINDS, n=1)
        raise ValueError(
            f"crf={value!r}: expected one of {', '.join(CRF_KINDS)}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    return value


def build_crf(kind: str | bool, *, iterations: int, window: int, dense_kernels: dict[str, float]) -> nn.Module | None:
    """The post-processing CRF a DeepLab builder asks for: None, ``ConvCRF(iterations, window)`` with its own
    kernel defaults, or ``DenseCRF(iterations, **dense_kernels)`` (the paper's kernels; needs pydensecrf2)."""
    kind = crf_kind(kind)
    if kind == "conv":
        return ConvCRF(iterations=iterations, window=window)
    if kind == "dense":
        from segbench.models.architectures.dense_crf import DenseCRF  # numpy and the optional pydensecrf2

        return DenseCRF(iterations=iterations, **dense_kernels)
    return None
