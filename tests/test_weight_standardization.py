"""Weight standardization (Qiao et al. 2019) against plain transcriptions of the authors' and
timm's convolutions, its invariances, half precision, gradcheck and errors."""

import pytest
import torch
import torch.nn.functional as TF
from torch import nn as tnn

import normlib.functional as NF
from normlib import nn


class AuthorsWSConv2d(tnn.Conv2d):
    """The authors' WS convolution, written out: mean over the fan-in subtracted, divided by
    the unbiased standard deviation plus 1e-5."""

    def forward(self, x):
        w = self.weight
        w = w - w.mean(dim=(1, 2, 3), keepdim=True)
        std = w.flatten(1).std(dim=1).view(-1, 1, 1, 1) + 1e-5
        return TF.conv2d(x, w / std, self.bias, self.stride, self.padding, self.dilation, self.groups)


class TimmStdConv2d(tnn.Conv2d):
    """timm's StdConv2d, written out: a batch norm of the weight viewed as (1, out, fan-in),
    biased variance, eps (1e-6) under the square root; no bias by default."""

    def __init__(self, in_channels, out_channels, kernel_size, padding=0, bias=False, eps=1e-6):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        self.eps = eps

    def forward(self, x):
        w = TF.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                          momentum=0.0, eps=self.eps).reshape_as(self.weight)
        return TF.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def test_matches_timm_and_loads_its_state_dict():
    torch.manual_seed(0)
    theirs = TimmStdConv2d(3, 8, 3, padding=1)
    ours = nn.WSConv2d(3, 8, 3, padding=1, bias=False)
    assert ours.state_dict().keys() == theirs.state_dict().keys() == {"weight"}
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    theirs.load_state_dict(ours.state_dict())


def test_matches_the_authors_up_to_their_unbiased_std():
    """The authors divide by the unbiased std: ours is theirs times sqrt(n / (n - 1)), n the fan-in."""
    torch.manual_seed(1)
    theirs = AuthorsWSConv2d(4, 6, 3).double()
    with torch.no_grad():
        theirs.weight.normal_()  # filters of std ~1: their + 1e-5 then moves the result by ~1e-5
    ours = nn.WSConv2d(4, 6, 3, eps=1e-12).double()
    ours.load_state_dict(theirs.state_dict())
    assert set(ours.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    n = 4 * 3 * 3
    bias = ours.bias.view(1, -1, 1, 1)
    expected = (theirs(x) - bias) * (n / (n - 1)) ** 0.5 + bias
    torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=1e-4)


def test_standardized_filters_and_invariance():
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64) * 4 + 2
    s = NF.weight_standardization(w, eps=1e-300)
    torch.testing.assert_close(s.flatten(1).mean(1), torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-14)
    torch.testing.assert_close(s.flatten(1).var(1, correction=0), torch.ones(5, dtype=torch.float64))
    # each filter is invariant to its own scale and shift (for eps = 0; a negligible eps here)
    a = torch.rand(5, 1, 1, 1, dtype=torch.float64) + 0.5
    b = torch.randn(5, 1, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(NF.weight_standardization(a * w + b, eps=1e-300), s)
    # a Linear weight (out, in) works too
    lin = NF.weight_standardization(torch.randn(4, 7, dtype=torch.float64), eps=1e-300)
    torch.testing.assert_close(lin.var(1, correction=0), torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_statistics_in_fp32(dtype):
    w = (torch.randn(8, 16, 3, 3) * 0.01 + 100).to(dtype)  # a large offset: the mean must not round in dtype
    ours = NF.weight_standardization(w)
    assert ours.dtype == dtype
    expected = NF.weight_standardization(w.float()).to(dtype)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    assert torch.isfinite(ours).all()


def test_gradcheck():
    w = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: NF.weight_standardization(w, eps=1e-5), (w,))
    layer = nn.WSConv2d(2, 3, 2).double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_empty_output_channels_and_batch():
    assert NF.weight_standardization(torch.randn(0, 3, 3, 3)).shape == (0, 3, 3, 3)
    assert nn.WSConv2d(3, 4, 3)(torch.randn(0, 3, 5, 5)).shape == (0, 4, 3, 3)


BAD = [
    (lambda: NF.weight_standardization(torch.randn(4)), ValueError, "weight: expected at least 2 dimensions"),
    (lambda: NF.weight_standardization(torch.randn(4, 1, 1, 1)), ValueError, "weight: expected a fan-in of at least 2"),
    (lambda: NF.weight_standardization(torch.randn(4, 3), eps=0), ValueError, "eps: expected a positive finite number"),
    (lambda: NF.weight_standardization(torch.ones(4, 3, dtype=torch.int64)), TypeError, "weight: expected a floating-point"),
    (lambda: nn.WSConv2d(3, 4, 3, eps=-1.0), ValueError, "eps: expected a positive finite number"),
    (lambda: nn.WSConv2d(1, 4, 1), ValueError, "kernel_size: expected a fan-in"),
]


@pytest.mark.parametrize("call,error,message", BAD, ids=[m[:40] for _, _, m in BAD])
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)
