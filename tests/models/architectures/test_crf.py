"""ConvCRF: mean-field updates checked against a brute-force evaluation of the model, denoising, colour
gating, and the identity cases."""

import math

import pytest
import torch

from segbench.models.architectures.crf import ConvCRF
from tests.crf_reference import boundary_error, exact_mean_field, planted_edge


def brute_force_step(logits, image, crf):
    """One mean-field update written from Krähenbühl & Koltun's Alg. 1 with Potts compatibility, pair by pair."""
    n, c, h, w = logits.shape
    q = logits.softmax(1)
    r = crf.window // 2
    out = logits.clone()
    for y in range(h):
        for x in range(w):
            for yy in range(max(0, y - r), min(h, y + r + 1)):
                for xx in range(max(0, x - r), min(w, x + r + 1)):
                    if (yy, xx) == (y, x):
                        continue
                    d2 = (y - yy) ** 2 + (x - xx) ** 2
                    c2 = (image[0, :, y, x] - image[0, :, yy, xx]).square().sum()
                    k = crf.w_appearance * torch.exp(-d2 / (2 * crf.theta_alpha**2) - c2 / (2 * crf.theta_beta**2))
                    k = k + crf.w_smoothness * math.exp(-d2 / (2 * crf.theta_gamma**2))
                    # Potts: -sum_{l' != l} k Q_j(l') = k Q_j(l) - k, and the constant cancels in the softmax.
                    out[0, :, y, x] += k * q[0, :, yy, xx]
    return out


def two_regions(h=24, w=32):
    """Left half dark red, right half light blue (0..255); labels 0 and 1."""
    image = torch.zeros(1, 3, h, w)
    image[:, :, :, : w // 2] = torch.tensor([150.0, 20.0, 20.0])[:, None, None]
    image[:, :, :, w // 2 :] = torch.tensor([40.0, 120.0, 230.0])[:, None, None]
    labels = torch.zeros(h, w, dtype=torch.long)
    labels[:, w // 2 :] = 1
    return image, labels


def test_one_iteration_matches_brute_force():
    crf = ConvCRF(iterations=1, window=5, theta_alpha=4, theta_beta=20, theta_gamma=2, w_appearance=2, w_smoothness=1)
    logits = torch.randn(1, 3, 6, 7)
    image = torch.rand(1, 2, 6, 7) * 50  # two channels: any channel count works
    torch.testing.assert_close(crf(logits, image), brute_force_step(logits, image, crf), rtol=1e-5, atol=1e-5)


def test_iterations_compose_the_update():
    crf1 = ConvCRF(iterations=1, window=3)
    crf3 = ConvCRF(iterations=3, window=3)
    logits, image = torch.randn(2, 4, 9, 8), torch.rand(2, 3, 9, 8) * 255
    kernel = crf1.pairwise_kernel(image)
    q = logits
    for _ in range(3):
        q = logits + crf1.message(q.softmax(1), kernel)
    torch.testing.assert_close(crf3(logits, image), q)


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_shape_and_no_parameters(channels):
    crf = ConvCRF(window=11)
    out = crf(torch.randn(2, 4, 13, 17), torch.rand(2, channels, 13, 17))
    assert out.shape == (2, 4, 13, 17)
    assert list(crf.parameters()) == []


def test_reduces_label_noise_on_two_colour_regions():
    image, labels = two_regions()
    torch.manual_seed(1)
    clean = torch.nn.functional.one_hot(labels, 2).permute(2, 0, 1)[None].float()
    logits = 2.0 * clean + 1.7 * torch.randn(1, 2, *labels.shape)
    before = (logits.argmax(1)[0] == labels).float().mean().item()
    after = (ConvCRF(iterations=5, window=7)(logits, image).argmax(1)[0] == labels).float().mean().item()
    assert 0.7 < before < 0.9  # the unaries are noisy
    assert after > 0.99 and after > before


def test_appearance_kernel_respects_colour_edges():
    # Left: confident label 0. Right (another colour): a weak preference for label 1.
    image, labels = two_regions(12, 16)
    logits = torch.zeros(1, 2, 12, 16)
    logits[:, 0, :, :8] = 5.0
    logits[:, 1, :, 8:] = 0.5
    colour_gated = ConvCRF(iterations=5, window=7, w_appearance=10, w_smoothness=0)(logits, image)
    assert torch.equal(colour_gated.argmax(1)[0], labels)
    # Smoothing that ignores colour drags the left region's label across the edge.
    blind = ConvCRF(iterations=5, window=7, w_appearance=0, w_smoothness=10)(logits, image)
    assert (blind.argmax(1)[0, :, 8] == 0).all()


def test_zero_weights_or_iterations_are_the_identity():
    logits, image = torch.randn(1, 3, 10, 11), torch.rand(1, 3, 10, 11) * 255
    assert torch.equal(ConvCRF(w_appearance=0, w_smoothness=0)(logits, image), logits)
    assert torch.equal(ConvCRF(iterations=0)(logits, image), logits)
    # Tiny weights: tiny change (the update is continuous in the weights).
    out = ConvCRF(w_appearance=1e-6, w_smoothness=1e-6)(logits, image)
    assert 0 < (out - logits).abs().max() < 1e-4


def test_errors():
    with pytest.raises(ValueError, match="odd"):
        ConvCRF(window=6)
    with pytest.raises(ValueError, match="iterations"):
        ConvCRF(iterations=-1)
    with pytest.raises(ValueError, match="match logits"):
        ConvCRF()(torch.randn(1, 2, 8, 8), torch.rand(1, 3, 8, 9))


def test_whole_image_window_is_exact_mean_field():
    # A window of 2 * max(H, W) - 1 covers every pixel pair: ConvCRF is then the fully connected CRF of its
    # model (kernels summed, not normalised; j != i), whose mean field the brute-force reference computes.
    h, w = 7, 9
    crf = ConvCRF(iterations=5, window=2 * max(h, w) - 1, theta_alpha=6, theta_beta=30, theta_gamma=2,
                  w_appearance=0.5, w_smoothness=0.3)  # fmt: skip
    torch.manual_seed(0)
    logits, image = 2 * torch.randn(1, 3, h, w), torch.rand(1, 3, h, w) * 255
    exact = exact_mean_field(logits[0], image[0], iterations=5, theta_alpha=6, theta_beta=30, theta_gamma=2,
                             w_appearance=0.5, w_smoothness=0.3, normalize=False, include_self=False)  # fmt: skip
    torch.testing.assert_close(crf(logits, image)[0].double(), exact, rtol=1e-5, atol=1e-5)
    # The default 7x7 window is a different model on this image: far pairs are dropped.
    local = ConvCRF(iterations=5, window=7, theta_alpha=6, theta_beta=30, theta_gamma=2, w_appearance=0.5,
                    w_smoothness=0.3)(logits, image)  # fmt: skip
    assert (local[0].double() - exact).abs().max() > 0.05


@pytest.mark.parametrize("window, reach", [(7, 3), (11, 5)])
def test_moves_a_blurred_boundary_to_the_colour_edge_within_its_window(window, reach):
    # A straight boundary inside one colour region is a tie for a local vote: ConvCRF corrects a
    # misplacement up to its window's radius and leaves one beyond it where it was.
    crf = ConvCRF(iterations=10, window=window)
    for shift in (1, reach):
        logits, image, edge = planted_edge(shift)
        assert boundary_error(logits, edge) == shift
        assert boundary_error(crf(logits, image), edge) == 0.0
    logits, image, edge = planted_edge(reach + 1)
    assert boundary_error(crf(logits, image), edge) == reach + 1
