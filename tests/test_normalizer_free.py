"""Normalizer-free networks: scaled weight standardization against a transcription of timm's
``ScaledStdConv2d``, adaptive gradient clipping against a transcription of timm's
``adaptive_clip_grad``, the book's ResNet and its signal propagation statistics."""

import math

import pytest
import torch
import torch.nn.functional as TF
from torch import nn as tnn

import normlib.functional as NF
from normlib import nn
from normlib.clipping import adaptive_grad_clip_, unitwise_norm


class TimmScaledStdConv2d(tnn.Conv2d):
    """timm's ScaledStdConv2d, written out: a batch norm of the weight viewed as (1, out, fan-in)
    whose affine weight is gain * gamma / sqrt(fan-in); eps (1e-6) under the square root."""

    def __init__(self, in_channels, out_channels, kernel_size, padding=0, bias=True, gamma=1.0, eps=1e-6,
                 gain_init=1.0):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        self.gain = tnn.Parameter(torch.full((out_channels, 1, 1, 1), gain_init))
        self.scale = gamma * self.weight[0].numel() ** -0.5
        self.eps = eps

    def forward(self, x):
        w = TF.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                          weight=(self.gain * self.scale).view(-1), training=True, momentum=0.0,
                          eps=self.eps).reshape_as(self.weight)
        return TF.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def timm_adaptive_clip_grad(parameters, clip_factor=0.01, eps=1e-3):
    """timm's adaptive_clip_grad, written out (norm over dims 1.. for matrices and filters, over
    everything for vectors and scalars; the grad norm floored at 1e-6 in the division)."""
    def norm(x):
        return x.norm() if x.ndim <= 1 else x.square().sum(dim=tuple(range(1, x.ndim)), keepdim=True).sqrt()

    for p in parameters:
        if p.grad is None:
            continue
        max_norm = norm(p.detach()).clamp_(min=eps).mul_(clip_factor)
        grad_norm = norm(p.grad.detach())
        clipped = p.grad.detach() * (max_norm / grad_norm.clamp(min=1e-6))
        p.grad.detach().copy_(torch.where(grad_norm < max_norm, p.grad.detach(), clipped))


def test_matches_timm_and_loads_its_state_dict():
    torch.manual_seed(0)
    theirs = TimmScaledStdConv2d(3, 8, 3, padding=1, gamma=1.7, gain_init=1.0)
    with torch.no_grad():
        theirs.gain.uniform_(0.5, 2.0)
        theirs.bias.normal_()
    ours = nn.ScaledStdConv2d(3, 8, 3, padding=1, gamma=1.7)
    assert ours.state_dict().keys() == theirs.state_dict().keys() == {"weight", "bias", "gain"}
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    theirs.load_state_dict(ours.state_dict())


def test_scaled_filters_have_zero_mean_and_the_gain_as_norm():
    """Each scaled filter sums to 0 and has squared norm (gain * gamma)^2 (exactly, for eps = 0):
    on uncorrelated unit-variance inputs its output has variance (gain * gamma)^2."""
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64) * 3 + 1
    gain = torch.rand(5, dtype=torch.float64) + 0.5
    s = NF.scaled_weight_standardization(w, gain, gamma=1.7, eps=1e-300)
    torch.testing.assert_close(s.flatten(1).sum(1), torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-13)
    torch.testing.assert_close(s.flatten(1).square().sum(1), (1.7 * gain) ** 2)
    # without gain and gamma it is weight standardization divided by sqrt(fan-in)
    torch.testing.assert_close(NF.scaled_weight_standardization(w, eps=1e-300),
                               NF.weight_standardization(w, eps=1e-300) / math.sqrt(27))
    # the gain's shape does not matter, only its count
    torch.testing.assert_close(NF.scaled_weight_standardization(w, gain.view(5, 1, 1, 1), 1.7, 1e-300), s)


def test_output_variance_on_white_inputs():
    torch.manual_seed(0)
    conv = nn.ScaledStdConv2d(64, 32, 3, gamma=2.0)
    y = conv(torch.randn(16, 64, 20, 20))
    assert abs(y.var().item() / 4.0 - 1) < 0.05  # 2.0^2; 16 * 18 * 18 * 32 samples


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_statistics_in_fp32(dtype):
    w = (torch.randn(8, 16, 3, 3) * 0.01 + 100).to(dtype)  # a large offset: the mean must not round in dtype
    gain = torch.rand(8).to(dtype) + 0.5
    ours = NF.scaled_weight_standardization(w, gain, 1.7)
    assert ours.dtype == dtype
    expected = NF.scaled_weight_standardization(w.float(), gain.float(), 1.7).to(dtype)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    layer = nn.ScaledStdConv2d(4, 8, 3, dtype=dtype)
    assert layer(torch.randn(2, 4, 5, 5, dtype=dtype)).dtype == dtype


def test_gradcheck():
    w = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    gain = torch.rand(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, g: NF.scaled_weight_standardization(w, g, 1.7, 1e-5), (w, gain))
    layer = nn.ScaledStdConv2d(2, 3, 2, gamma=1.7).double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_empty_output_channels_and_batch():
    assert NF.scaled_weight_standardization(torch.randn(0, 3, 3, 3), torch.ones(0)).shape == (0, 3, 3, 3)
    assert nn.ScaledStdConv2d(3, 4, 3)(torch.randn(0, 3, 5, 5)).shape == (0, 4, 3, 3)


def _parameters(seed=0):
    torch.manual_seed(seed)
    shapes = [(6, 4, 3, 3), (5, 7), (5,), ()]
    params = [torch.randn(shape, requires_grad=True) for shape in shapes]
    for p, size in zip(params, [1.0, 0.001, 0.3, 10.0]):
        p.grad = torch.randn_like(p) * size  # some units far above the limit, some below
    return params


def test_agc_matches_timm_and_counts_the_clipped_units():
    ours, theirs = _parameters(), _parameters()
    clip = 0.05
    expected_count = sum(int((unitwise_norm(p.grad) > clip * unitwise_norm(p.detach()).clamp(min=1e-3)).sum())
                         for p in ours)
    count = adaptive_grad_clip_(ours, clip)
    timm_adaptive_clip_grad(theirs, clip)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad)
    assert 0 < int(count) == expected_count < 6 + 5 + 1 + 1
    # after clipping, no unit's gradient is above its limit
    for p in ours:
        assert (unitwise_norm(p.grad) <= clip * unitwise_norm(p.detach()).clamp(min=1e-3) * (1 + 1e-5)).all()


def test_agc_leaves_small_gradients_untouched_and_skips_missing_ones():
    w = torch.ones(3, 4, requires_grad=True)  # each row has norm 2
    w.grad = torch.tensor([[0.001] * 4, [1.0] * 4, [0.0] * 4])
    bias = torch.zeros(3, requires_grad=True)  # zero weights: the limit is clip_factor * eps
    bias.grad = torch.ones(3)
    unused = torch.ones(2, requires_grad=True)
    count = adaptive_grad_clip_([w, bias, unused], clip_factor=0.1, eps=1e-3)
    assert int(count) == 2 and unused.grad is None
    assert torch.equal(w.grad[0], torch.full((4,), 0.001)) and torch.equal(w.grad[2], torch.zeros(4))
    torch.testing.assert_close(w.grad[1].norm(), torch.tensor(0.2))  # 0.1 * ||row|| = 0.1 * 2
    torch.testing.assert_close(bias.grad.norm(), torch.tensor(1e-4))
    single = torch.ones(2, 2, requires_grad=True)
    single.grad = torch.full((2, 2), 5.0)
    assert int(adaptive_grad_clip_(single, 0.01)) == 2  # a lone tensor, like clip_grad_norm_


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_agc_half_precision_gradients(dtype):
    p = torch.randn(4, 8).to(dtype).requires_grad_()
    p.grad = (torch.randn(4, 8) * 100).to(dtype)  # squares overflow float16: norms in float32
    reference = p.detach().float().requires_grad_()
    reference.grad = p.grad.float()
    adaptive_grad_clip_(p, 0.01)
    adaptive_grad_clip_(reference, 0.01)
    assert p.grad.dtype == dtype and torch.isfinite(p.grad).all()
    torch.testing.assert_close(p.grad.float(), reference.grad, rtol=1e-2, atol=1e-4)


BAD = [
    (lambda: NF.scaled_weight_standardization(torch.randn(4)), ValueError, "weight: expected at least 2 dimensions"),
    (lambda: NF.scaled_weight_standardization(torch.randn(4, 1, 1, 1)), ValueError, "weight: expected a fan-in"),
    (lambda: NF.scaled_weight_standardization(torch.randn(4, 3), torch.ones(3)), ValueError,
     "gain: expected one value per output channel (4)"),
    (lambda: NF.scaled_weight_standardization(torch.randn(4, 3), gamma=0.0), ValueError, "gamma: expected a number"),
    (lambda: NF.scaled_weight_standardization(torch.randn(4, 3), torch.ones(4, dtype=torch.int64)), TypeError,
     "gain: expected a floating-point"),
    (lambda: nn.ScaledStdConv2d(3, 4, 3, gamma=-1.0), ValueError, "gamma: expected a number"),
    (lambda: nn.ScaledStdConv2d(3, 4, 3, eps=0.0), ValueError, "eps: expected a positive finite number"),
    (lambda: adaptive_grad_clip_([torch.ones(2)], clip_factor=0.0), ValueError, "clip_factor: expected a number"),
    (lambda: adaptive_grad_clip_([torch.ones(2)], eps=0.0), ValueError, "eps: expected a positive finite number"),
    (lambda: adaptive_grad_clip_([torch.ones(2), 3.0]), TypeError, "parameters: expected tensors, got float at"),
]


@pytest.mark.parametrize("call,error,message", BAD, ids=[m[:40] for _, _, m in BAD])
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


def test_resnet_expected_variances_and_signal_propagation():
    from normlib.book.models import ResNet
    from normlib.book.models.resnet import signal_propagation

    torch.manual_seed(0)
    model = ResNet("nf", blocks=(3, 2), widths=(16, 32), alpha=0.5)
    expected = [1.25, 1.5, 1.75, 1.25, 1.5]  # alpha^2 more per block; reset at the transition
    assert model.expected_variances() == pytest.approx(expected)
    assert [block.beta for block in model.blocks] == pytest.approx([1.0, 1.25 ** 0.5, 1.5 ** 0.5, 1.75 ** 0.5,
                                                                    1.25 ** 0.5])
    stats = signal_propagation(model, torch.randn(8, 1, 64, 64))
    assert {key: len(values) for key, values in stats.items()} == dict.fromkeys(stats, 5)
    # scaled WS keeps the stream on its predicted variance: within 6% in the first stage over
    # seeds 0-4; up to 18% off after the transition, whose 1x1 shortcut mixes correlated channels
    ratios = [v / e for v, e in zip(stats["variance"], expected)]
    assert all(abs(r - 1) < 0.1 for r in ratios[:3]) and all(abs(r - 1) < 0.25 for r in ratios), ratios
    assert all(0.15 < v < 0.35 for v in stats["branch_variance"])  # alpha^2 = 0.25
    assert not any(block._forward_hooks for block in model.blocks)  # the hooks are removed


def test_resnet_skipinit_blocks_start_as_the_identity_and_bad_kinds_are_named():
    from normlib.book.models import ResNet

    model = ResNet("plain", blocks=(2,), widths=(8,), skipinit=True)
    x = torch.randn(2, 8, 7, 7)
    torch.testing.assert_close(model.blocks[0](x), x, rtol=0, atol=0)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(ValueError, match="kind: expected one of"):
        ResNet("ln")
    with pytest.raises(ValueError, match="blocks: expected at least one block per stage"):
        ResNet("bn", blocks=(2,), widths=(8, 16))
