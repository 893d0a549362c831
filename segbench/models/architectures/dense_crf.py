"""The fully connected CRF as DeepLab v1/v2 ran it: Krähenbühl & Koltun's mean-field inference over *all*
pixel pairs (NIPS 2011, Alg. 1 with the permutohedral-lattice filtering of Sec. 4), through ``pydensecrf2``,
a Python binding of Krähenbühl's own C++ code (optional: ``pip install 'segbench[crf]'``).

The model is the one ``segbench.models.architectures.crf`` describes (Potts compatibility, an appearance
kernel on position and colour, a smoothness kernel on position), with two differences that come from the
code DeepLab ran, not from the paper's equations:

- Per-pixel normalisation. Krähenbühl's code divides pixel i's message by ``sum_j k(i, j)`` (the 2011
  release: ``PottsPotential(..., per_pixel_normalization=true)``; the 2013 release that ``pydensecrf2``
  wraps: ``NORMALIZE_AFTER``, which we select; its default ``NORMALIZE_SYMMETRIC`` is another choice),
  so a message is a weighted *average* of the neighbours' marginals and the weights w are bounded pulls.
  ConvCRF sums instead, so its weights are not comparable with these.
- The pixel's own term. The lattice filter includes j = i (k(i, i) = 1); the paper's sum excludes it.

The lattice replaces each Gaussian by a coarser separable blur on a permutohedral grid (Adams et al.,
Eurographics 2010). The error of one message against exact Gaussians, measured in
``tests/models/architectures/test_dense_crf.py`` and stated in docs/crf.md, is the price of the O(N)
cost; the exact O(N^2) mean field is the reference there.

Runs on the CPU (the scores are copied there and back), one image at a time; not differentiable (the
papers train the network and the CRF separately). Volumes are refined as the 2D slices the network sees.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
from torch import Tensor

from segbench.models.architectures.crf import MeanFieldCRF

__all__ = ["DenseCRF", "dense_crf_available", "PYDENSECRF_MISSING"]

PYDENSECRF_MISSING = (
    "crf='dense' needs pydensecrf2 (Krähenbühl's fully connected CRF): pip install 'segbench[crf]' "
    "(or pip install numpy cython pydensecrf2; it compiles C++, about a minute)"
)


def dense_crf_available() -> bool:
    """Whether ``pydensecrf`` (the module ``pydensecrf2`` installs) can be imported."""
    return importlib.util.find_spec("pydensecrf") is not None


def _pydensecrf():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:
        raise ImportError(PYDENSECRF_MISSING) from err
    return dcrf


class DenseCRF(MeanFieldCRF):
    """Fully connected CRF post-processing of scores (Krähenbühl & Koltun 2011; DeepLab v1 Sec. 4, v2 Sec. 3.3).

    Args:
        iterations: mean-field iterations (DeepLab: 10).
        theta_alpha: spatial standard deviation of the appearance kernel, in pixels (DeepLab's sigma_alpha).
        theta_beta: colour standard deviation of the appearance kernel, in image intensity units (sigma_beta).
        theta_gamma: spatial standard deviation of the smoothness kernel, in pixels (sigma_gamma).
        w_appearance, w_smoothness: kernel weights (DeepLab's w1, w2); both 0 makes the CRF the identity.
    """

    def __init__(
        self,
        iterations: int = 10,
        theta_alpha: float = 49,
        theta_beta: float = 5,
        theta_gamma: float = 3,
        w_appearance: float = 4,
        w_smoothness: float = 3,
    ):
        super().__init__(iterations, theta_alpha, theta_beta, theta_gamma, w_appearance, w_smoothness)
        if min(w_appearance, w_smoothness) < 0:
            raise ValueError(f"w_appearance, w_smoothness must be >= 0, got {w_appearance}, {w_smoothness}")
        _pydensecrf()  # fail when the model is built, not at its first evaluation

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}, {self.kernel_repr()}"

    def features(self, image: np.ndarray) -> list[tuple[float, np.ndarray]]:
        """(weight, features) per kernel for one (channels, H, W) image: positions over theta, and for the
        appearance kernel colours over theta_beta, as (D, H*W) float32 (the lattice's input)."""
        h, w = image.shape[-2:]
        rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
        kernels = []
        if self.w_smoothness > 0:
            kernels.append((self.w_smoothness, np.stack([rows, cols]) / self.theta_gamma))
        if self.w_appearance > 0:
            position = np.stack([rows, cols]) / self.theta_alpha
            kernels.append((self.w_appearance, np.concatenate([position, image / self.theta_beta])))
        return [(weight, np.ascontiguousarray(f.reshape(len(f), -1), dtype=np.float32)) for weight, f in kernels]

    def marginals(self, logits: np.ndarray, image: np.ndarray) -> np.ndarray:
        """Mean-field marginals Q (C, H, W) of one image's scores (C, H, W) guided by ``image``."""
        dcrf = _pydensecrf()
        classes, h, w = logits.shape
        shifted = logits - logits.max(axis=0, keepdims=True)
        unary = np.log(np.exp(shifted).sum(axis=0, keepdims=True)) - shifted  # -log softmax
        crf = dcrf.DenseCRF(h * w, classes)
        crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(classes, -1), dtype=np.float32))
        for weight, features in self.features(image):
            crf.addPairwiseEnergy(features, compat=weight, kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_AFTER)
        return np.asarray(crf.inference(self.iterations), dtype=np.float32).reshape(classes, h, w)

    @torch.no_grad()
    def forward(self, logits: Tensor, image: Tensor) -> Tensor:
        """Refine ``logits`` (N, C, H, W) with the guidance ``image`` (N, channels, H, W), any channel count.

        Returns log Q, the logits of the final marginals (their softmax is Q), on ``logits``' device and
        dtype. With zero weights or zero iterations it returns ``logits`` unchanged.
        """
        if self.leaves_unchanged(logits, image):
            return logits
        scores = logits.detach().float().cpu().numpy()
        guide = image.detach().float().cpu().numpy()
        q = np.stack([self.marginals(s, g) for s, g in zip(scores, guide)])
        # Q underflows to 0 in float32 far from a boundary; the floor keeps log Q finite (-87).
        refined = torch.from_numpy(q).clamp_min_(torch.finfo(torch.float32).tiny).log_()
        return refined.to(device=logits.device, dtype=logits.dtype)
