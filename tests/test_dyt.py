"""Dynamic Tanh (Zhu et al. 2025) against a plain transcription of the authors' module, in both
layouts and in half precision, and the authors' state-dict names."""

import pytest
import torch
from torch import nn as tnn

import normlib.functional as NF
from normlib import nn


class AuthorsDynamicTanh(tnn.Module):
    """The authors' DynamicTanh as their paper and code define it, written out here: a scalar
    alpha, then a per-channel gain and shift on the last axis or on axis 1."""

    def __init__(self, normalized_shape, channels_last, alpha_init_value=0.5):
        super().__init__()
        self.channels_last = channels_last
        self.alpha = tnn.Parameter(torch.ones(1) * alpha_init_value)
        self.weight = tnn.Parameter(torch.ones(normalized_shape))
        self.bias = tnn.Parameter(torch.zeros(normalized_shape))

    def forward(self, x):
        x = torch.tanh(self.alpha * x)
        if self.channels_last:
            return x * self.weight + self.bias
        return x * self.weight[:, None, None] + self.bias[:, None, None]


@pytest.mark.parametrize("channels_last,shape", [(True, (2, 5, 8)), (False, (2, 8, 3, 4))])
def test_dyt_matches_the_authors_module_and_loads_its_state_dict(channels_last, shape):
    torch.manual_seed(0)
    theirs = AuthorsDynamicTanh(8, channels_last, alpha_init_value=0.8)
    with torch.no_grad():  # move every parameter off its initial value
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    ours = nn.DyT(8, channels_last=channels_last, alpha_init_value=0.8)
    assert set(ours.state_dict()) == set(theirs.state_dict()) == {"alpha", "weight", "bias"}
    ours.load_state_dict(theirs.state_dict())
    x = 3 * torch.randn(shape)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    # and back: the authors' module loads ours
    theirs.load_state_dict(ours.state_dict())


def test_dyt_initial_values_and_saturation():
    layer = nn.DyT(4)
    assert layer.alpha.shape == (1,) and layer.alpha.item() == 0.5
    assert torch.equal(layer.weight, torch.ones(4)) and torch.equal(layer.bias, torch.zeros(4))
    x = torch.tensor([[-1e4, -2.0, 0.0, 1e4]])
    y = layer(x)
    torch.testing.assert_close(y, torch.tanh(0.5 * x))
    assert y.abs().max() <= 1  # squashed: |tanh| <= 1 with unit gain and no shift
    assert "alpha_init_value=0.5" in repr(layer)
    with pytest.raises(ValueError, match="normalized_shape: expected one or more positive sizes"):
        nn.DyT(0)
    with pytest.raises(ValueError, match="normalized_shape: expected the number of channels"):
        nn.DyT((4, 2))
    # a LayerNorm's normalized_shape can be passed on, as the authors' conversion does
    assert nn.DyT(nn.LayerNorm(4).normalized_shape).weight.shape == (4,)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dyt_in_half_precision_computes_in_float32(dtype):
    torch.manual_seed(0)
    x, alpha, w, b = torch.randn(4, 16) * 4, torch.tensor([0.9]), torch.randn(16), torch.randn(16)
    expected = (torch.tanh(alpha * x.to(dtype).float()) * w + b).to(dtype)
    out = NF.dyt(x.to(dtype), alpha, w, b)
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected, rtol=0, atol=0)  # one rounding, at the end
    # half-precision parameters are accepted too (mixed dtypes, as torch's norms accept them)
    assert NF.dyt(x.to(dtype), alpha.to(dtype), w.to(dtype), b.to(dtype)).dtype == dtype


def test_dyt_empty_batch_and_gradient_of_alpha():
    assert NF.dyt(torch.randn(0, 3), torch.ones(1)).shape == (0, 3)
    layer = nn.DyT(3)
    x = torch.randn(5, 3, dtype=torch.float64)
    layer.double()(x).sum().backward()
    # d/d alpha of sum tanh(alpha x) = sum x (1 - tanh(alpha x)^2)
    expected = (x * (1 - torch.tanh(0.5 * x) ** 2)).sum()
    torch.testing.assert_close(layer.alpha.grad[0], expected)
