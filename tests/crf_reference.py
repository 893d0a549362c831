"""Exact mean-field inference of the fully connected CRF, by brute force over all pixel pairs (O(N^2)
memory and time: tiny images only). The reference both CRFs are checked against."""

from __future__ import annotations

import torch


def kernel_matrix(
    h: int, w: int, image: torch.Tensor, *, theta: float, theta_beta: float | None, normalize: bool, include_self: bool
) -> torch.Tensor:
    """k(i, j) for all pixel pairs (N, N), float64: exp(-|p_i - p_j|^2 / 2 theta^2), times
    exp(-|I_i - I_j|^2 / 2 theta_beta^2) when ``theta_beta`` is given (the appearance kernel).
    ``include_self`` keeps k(i, i) = 1 (Krähenbühl's code) or zeroes it (the paper's sum over j != i);
    ``normalize`` divides row i by its sum (the code's per-pixel normalisation)."""
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    position = torch.stack([rows.flatten(), cols.flatten()], dim=1)
    exponent = -torch.cdist(position, position).square() / (2 * theta**2)
    if theta_beta is not None:
        colour = image.reshape(image.shape[0], -1).T.double()
        exponent = exponent - torch.cdist(colour, colour).square() / (2 * theta_beta**2)
    k = exponent.exp()
    if not include_self:
        k.fill_diagonal_(0.0)
    if normalize:
        k = k / k.sum(dim=1, keepdim=True)
    return k


def exact_mean_field(
    logits: torch.Tensor,
    image: torch.Tensor,
    *,
    iterations: int,
    theta_alpha: float,
    theta_beta: float,
    theta_gamma: float,
    w_appearance: float,
    w_smoothness: float,
    normalize: bool,
    include_self: bool,
) -> torch.Tensor:
    """Mean field of a Potts CRF on one image, (C, H, W) scores and (channels, H, W) guide: ``iterations``
    times Q <- softmax(logits + sum_j k(i, j) Q_j) (Krähenbühl & Koltun, Alg. 1; with Potts compatibility
    the constant -sum_j k(i, j) cancels in the softmax). Returns the last pre-softmax scores (C, H, W)."""
    classes, h, w = logits.shape
    appearance = kernel_matrix(h, w, image, theta=theta_alpha, theta_beta=theta_beta, normalize=normalize,
                               include_self=include_self)  # fmt: skip
    smoothness = kernel_matrix(h, w, image, theta=theta_gamma, theta_beta=None, normalize=normalize,
                               include_self=include_self)  # fmt: skip
    k = w_appearance * appearance + w_smoothness * smoothness
    unary = logits.reshape(classes, -1).double()
    refined = unary
    for _ in range(iterations):
        refined = unary + refined.softmax(dim=0) @ k.T
    return refined.reshape(classes, h, w)


def planted_edge(shift: int, h: int = 20, w: int = 32, edge: int = 12):
    """A sharp colour edge at column ``edge`` (truth: label 1 from there on) and blurred scores whose
    boundary sits ``shift`` columns to the right of it, as coarse upsampled scores misplace it."""
    image = torch.zeros(1, 3, h, w)
    image[..., :edge] = torch.tensor([150.0, 40.0, 30.0])[:, None, None]
    image[..., edge:] = torch.tensor([60.0, 110.0, 200.0])[:, None, None]
    image += 4 * torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    margin = 1.5 * torch.tanh((torch.arange(w, dtype=torch.float32) - (edge + shift - 0.5)) / 4)
    logits = torch.stack([-margin, margin])[None, :, None, :].expand(1, 2, h, w).contiguous()
    return logits, image, edge


def boundary_error(logits, edge):
    """Mean over rows of the columns between the predicted boundary and the colour edge."""
    w = logits.shape[-1]
    return (logits.argmax(1)[0].sum(1).float() - (w - edge)).abs().mean().item()
