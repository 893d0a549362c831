"""Joint image/mask augmentation on tensors, torch only.

Geometry (scale, rotation, crop/pad) is one resampling: each output pixel is mapped back through the
crop window, the rotation about the scaled image's centre and the scale to an input position, then
sampled bilinearly for the image and nearest for the mask (``grid_sample``), so the image is
interpolated once, mask values stay exact class ids, and pixels from outside the input become 0
(the normalised mean) in the image and ``ignore_index`` in the mask. Without scale or rotation the
crop/pad is an exact copy. Flips follow (exact), then gamma, intensity and noise on the image only.

All draws come from the ``torch.Generator`` passed in, in a fixed order, so one seed gives one result.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from segbench.data.config import AugmentConfig

__all__ = ["JointAugment", "crop_or_pad"]


def crop_or_pad(tensor: torch.Tensor, top: int, left: int, height: int, width: int, fill: float) -> torch.Tensor:
    """Window [top, top + height) x [left, left + width) of the last two axes; outside -> ``fill``.
    ``top``/``left`` may be negative (padding before) or exceed the size (padding after)."""
    h, w = tensor.shape[-2:]
    out = tensor.new_full((*tensor.shape[:-2], height, width), fill)
    y0, x0 = max(0, -top), max(0, -left)
    y1, x1 = min(height, h - top), min(width, w - left)
    if y1 > y0 and x1 > x0:
        out[..., y0:y1, x0:x1] = tensor[..., top + y0 : top + y1, left + x0 : left + x1]
    return out


class JointAugment:
    """Callable ``(image[C,H,W] float, mask[H,W] long, generator) -> (image, mask)``."""

    def __init__(self, cfg: AugmentConfig, ignore_index: int) -> None:
        self.cfg = cfg
        self.ignore_index = ignore_index

    def _uniform(self, u: float, low: float, high: float) -> float:
        return low + u * (high - low)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        u = torch.rand(10, generator=generator, dtype=torch.float64).tolist()
        scale = self._uniform(u[0], *cfg.scale)
        angle = math.radians(self._uniform(u[1], -cfg.rotate, cfg.rotate))
        hflip, vflip = bool(u[2] < cfg.hflip), bool(u[3] < cfg.vflip)
        gamma = math.exp(self._uniform(u[4], math.log(cfg.gamma[0]), math.log(cfg.gamma[1])))
        gain = self._uniform(u[5], -cfg.intensity, cfg.intensity)
        shift = self._uniform(u[6], -cfg.intensity, cfg.intensity)

        h, w = mask.shape
        out_h, out_w = cfg.crop_size or (h, w)
        scaled_h, scaled_w = round(h * scale), round(w * scale)
        if cfg.crop_size is None:  # zoom about the centre, keep the size
            top, left = (scaled_h - out_h) // 2, (scaled_w - out_w) // 2
        else:
            top = self._offset(u[7], scaled_h - out_h)
            left = self._offset(u[8], scaled_w - out_w)
        if scaled_h == h and scaled_w == w and angle == 0.0:
            image = crop_or_pad(image, top, left, out_h, out_w, 0.0)
            mask = crop_or_pad(mask, top, left, out_h, out_w, self.ignore_index)
        else:
            image, mask = self._resample(image, mask, scale, angle, top, left, out_h, out_w)

        if hflip:
            image, mask = image.flip(-1), mask.flip(-1)
        if vflip:
            image, mask = image.flip(-2), mask.flip(-2)
        image = self._photometric(image, gamma, gain, shift, generator)
        return image.contiguous(), mask.contiguous()

    @staticmethod
    def _offset(u: float, slack: int) -> int:
        """Integer uniform in [min(0, slack), max(0, slack)]: crop inside, or place the image in the pad."""
        low, high = min(0, slack), max(0, slack)
        return low + min(int(u * (high - low + 1)), high - low)

    def _resample(self, image, mask, scale, angle, top, left, out_h, out_w):
        h, w = mask.shape
        # Output pixel centre (i + 0.5, j + 0.5) sits at (i + 0.5 + top, j + 0.5 + left) in the scaled image;
        # rotated about its centre (cy, cx) and unscaled, that is the input position (y_in, x_in):
        #   y_in = (cos dy - sin dx + cy) / scale,  x_in = (sin dy + cos dx + cx) / scale,  d = position - centre.
        # All affine in the output's normalised coordinates, so one affine_grid builds the sampling grid
        # (in float64: the mask's nearest-neighbour choice must not move with rounding).
        cy, cx = h * scale / 2, w * scale / 2
        cos, sin = math.cos(angle), math.sin(angle)
        dy0, dx0 = out_h / 2 + top - cy, out_w / 2 + left - cx  # d at the output's centre
        theta = torch.tensor([[
            [cos * out_w / (w * scale), sin * out_h / (w * scale), 2 * (sin * dy0 + cos * dx0 + cx) / (w * scale) - 1],
            [-sin * out_w / (h * scale), cos * out_h / (h * scale), 2 * (cos * dy0 - sin * dx0 + cy) / (h * scale) - 1],
        ]], dtype=torch.float64)
        grid = F.affine_grid(theta, [1, 1, out_h, out_w], align_corners=False)
        image = F.grid_sample(image[None], grid.to(image.dtype), mode="bilinear", padding_mode="zeros",
                              align_corners=False)[0]
        # Labels + 1, so that the zero padding marks "outside the input" (only a -1 label, which can
        # only be ignore_index, also becomes 0, and it is ignore either way).
        shifted = (mask.to(torch.float64) + 1)[None, None]
        sampled = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        sampled = sampled[0, 0].round().long()
        mask = torch.where(sampled == 0, torch.full_like(sampled, self.ignore_index), sampled - 1)
        return image, mask

    def _photometric(self, image, gamma, gain, shift, generator):
        cfg = self.cfg
        if gamma != 1.0:  # on the image rescaled to [0, 1], then back (nnU-Net's gamma transform)
            low, high = torch.aminmax(image)
            span = (high - low).clamp_min(1e-6)
            image = ((image - low) / span).clamp(0, 1).pow(gamma) * span + low
        image = image * (1 + gain) + shift
        if cfg.noise_std > 0:
            image = image + cfg.noise_std * torch.randn(image.shape, generator=generator, dtype=image.dtype)
        return image
