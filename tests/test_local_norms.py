"""Local normalization: local contrast normalization against a position-by-position
transcription, its invariance to an affine change of contrast, half precision, gradcheck and
errors; the LocalResponseNorm module against torch's."""

import math

import pytest
import torch

import normlib.functional as NF
from normlib import nn


def transcribed_lcn(x, kernel_size, sigma, eps):
    """Local contrast normalization written out one position at a time: a Gaussian window over
    the positions inside the image (renormalized to sum to 1 there), uniform over channels."""
    n, c, h, w = x.shape
    r = kernel_size // 2

    def window_average(t, i, j):  # t: (N, C, H, W) -> (N,)
        total, mass = torch.zeros(n, dtype=t.dtype), 0.0
        for p in range(max(0, i - r), min(h, i + r + 1)):
            for q in range(max(0, j - r), min(w, j + r + 1)):
                weight = math.exp(-((p - i) ** 2 + (q - j) ** 2) / (2 * sigma ** 2))
                total = total + weight * t[:, :, p, q].mean(1)
                mass += weight
        return total / mass

    mean = torch.stack([torch.stack([window_average(x, i, j) for j in range(w)], -1) for i in range(h)], -2)
    v = x - mean[:, None]
    var = torch.stack([torch.stack([window_average(v.square(), i, j) for j in range(w)], -1)
                       for i in range(h)], -2)
    local_std = var.sqrt()[:, None]
    image_std = local_std.mean(dim=(2, 3), keepdim=True)
    return v / torch.maximum(local_std, image_std).clamp(min=eps)


def test_matches_the_transcription():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    torch.testing.assert_close(NF.local_contrast_norm(x, 5, 1.5, 1e-4), transcribed_lcn(x, 5, 1.5, 1e-4))


def test_invariant_to_an_affine_change_of_contrast_and_zero_on_a_flat_image():
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    y = NF.local_contrast_norm(x, 9, 2.0, 1e-12)
    for a, b in [(3.0, -1.0), (0.01, 5.0)]:
        torch.testing.assert_close(NF.local_contrast_norm(a * x + b, 9, 2.0, 1e-12), y, rtol=0, atol=1e-10)
    # a flat image has nothing to normalize: v is rounding error, divided by eps at most
    flat = NF.local_contrast_norm(torch.full((1, 1, 8, 8), 0.7, dtype=torch.float64), 5)
    assert torch.isfinite(flat).all() and flat.abs().max() < 1e-9


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_statistics_in_fp32(dtype):
    x = (torch.rand(2, 3, 12, 12) * 50 + 1000).to(dtype)  # a large offset: the mean must not round in dtype
    ours = NF.local_contrast_norm(x)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, NF.local_contrast_norm(x.float()).to(dtype), rtol=0, atol=0)


def test_gradcheck_module_and_empty_batch():
    x = torch.randn(2, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: NF.local_contrast_norm(x, 3, 1.0, 1e-6), (x,))
    layer = nn.LocalContrastNorm(5, 1.0)
    torch.testing.assert_close(layer(x.detach()), NF.local_contrast_norm(x.detach(), 5, 1.0))
    assert NF.local_contrast_norm(torch.empty(0, 3, 8, 8)).shape == (0, 3, 8, 8)


def test_local_response_norm_module_matches_torch():
    x = torch.randn(2, 7, 5, 5) * 30
    ours, theirs = nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0), torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)
    torch.testing.assert_close(ours(x), theirs(x))
    assert not list(ours.parameters()) and "alpha=0.0005" in repr(ours)


BAD = [
    (lambda: NF.local_contrast_norm(torch.randn(2, 3, 8)), ValueError, "input: expected 4 to 4 dimensions"),
    (lambda: NF.local_contrast_norm(torch.randn(1, 1, 8, 8), kernel_size=4), ValueError,
     "kernel_size: expected a positive odd integer"),
    (lambda: NF.local_contrast_norm(torch.randn(1, 1, 8, 8), sigma=0.0), ValueError, "sigma: expected a number"),
    (lambda: NF.local_contrast_norm(torch.randn(1, 1, 8, 8), eps=0.0), ValueError,
     "eps: expected a positive finite number"),
    (lambda: nn.LocalContrastNorm(kernel_size=True), ValueError, "kernel_size: expected a positive odd integer"),
    (lambda: nn.LocalResponseNorm(0), ValueError, "size: expected a positive integer"),
]


@pytest.mark.parametrize("call,error,message", BAD, ids=[m[:40] for _, _, m in BAD])
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)
