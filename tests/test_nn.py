"""normlib.nn layers behave like torch.nn's and share their state_dict format."""

import pytest
import torch
from torch import nn as tnn

import normlib.nn as nn

PAIRS = [
    (lambda m: m.BatchNorm1d(6), (8, 6)),
    (lambda m: m.BatchNorm1d(6, momentum=None), (8, 6, 5)),
    (lambda m: m.BatchNorm1d(6, affine=False, track_running_stats=False), (8, 6)),
    (lambda m: m.BatchNorm2d(6, eps=1e-3, momentum=0.5), (4, 6, 3, 3)),
    (lambda m: m.LayerNorm((5,)), (4, 3, 5)),
    (lambda m: m.LayerNorm(5, bias=False), (4, 5)),
    (lambda m: m.LayerNorm((3, 5), elementwise_affine=False), (4, 3, 5)),
    (lambda m: m.RMSNorm(5), (4, 3, 5)),
    (lambda m: m.RMSNorm([3, 5], eps=1e-6), (4, 3, 5)),
    (lambda m: m.GroupNorm(3, 6), (4, 6, 3, 3)),
    (lambda m: m.GroupNorm(2, 6, affine=False), (4, 6, 7)),
    (lambda m: m.GroupNorm(2, 6, bias=False), (4, 6, 7)),
    (lambda m: m.BatchNorm2d(6, bias=False), (4, 6, 2, 2)),
    (lambda m: m.InstanceNorm1d(6), (4, 6, 7)),
    (lambda m: m.InstanceNorm1d(6, affine=True), (6, 7)),
    (lambda m: m.InstanceNorm2d(6, affine=True, track_running_stats=True), (4, 6, 3, 3)),
    (lambda m: m.InstanceNorm2d(6, track_running_stats=True, momentum=None), (6, 3, 3)),
]


def perturb(module):
    """Give parameters non-default values so that loading them is visible."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))


@pytest.mark.parametrize("factory,shape", PAIRS)
def test_layer_matches_torch_over_train_and_eval_steps(factory, shape):
    ours, theirs = factory(nn), factory(tnn)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert repr(ours).split("(", 1)[1] == repr(theirs).split("(", 1)[1]
    perturb(theirs)
    ours.load_state_dict(theirs.state_dict())
    for step in range(3):
        x = torch.randn(shape) * 2 + 1
        torch.testing.assert_close(ours(x), theirs(x))
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, msg=key)
    ours.eval(), theirs.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), theirs(x))
    theirs.load_state_dict(ours.state_dict())  # and back


def test_gradients_match_torch():
    ours, theirs = nn.BatchNorm2d(4), tnn.BatchNorm2d(4)
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    (ours(x) ** 3).sum().backward()
    (theirs(x2) ** 3).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, atol=1e-4, rtol=1e-4)


def test_adain_layer():
    content, style = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 5, 5) * 3 + 1
    out = nn.AdaIN()(content, style)
    torch.testing.assert_close(out.mean(dim=(2, 3)), style.mean(dim=(2, 3)), atol=1e-5, rtol=1e-5)
    assert list(nn.AdaIN().state_dict()) == []


@pytest.mark.parametrize("call,message", [
    (lambda: nn.GroupNorm(4, 6), "num_groups: expected a divisor of num_channels=6, got 4"),
    (lambda: nn.BatchNorm1d(0), "num_features: expected a positive integer"),
    (lambda: nn.LayerNorm(4, eps=-1), "eps: expected a positive finite number"),
    (lambda: nn.BatchNorm2d(3)(torch.randn(2, 3, 4)), "input: expected 4D input to BatchNorm2d"),
    (lambda: nn.BatchNorm1d(3)(torch.randn(2, 5)), "input: expected 3 channels in dim 1"),
    (lambda: nn.BatchNorm1d(3)(torch.randn(1, 3)), "expected more than 1 value per channel when training"),
    (lambda: nn.GroupNorm(2, 4)(torch.randn(2, 6, 3)), "input: expected 4 channels in dim 1"),
    (lambda: nn.InstanceNorm2d(3)(torch.randn(2, 3)), "input: expected 3D (unbatched) or 4D input"),
])
def test_layer_bad_input(call, message):
    with pytest.raises(ValueError, match=None) as info:
        call()
    assert message in str(info.value)


def test_batch_of_one_is_fine_in_eval():
    bn = nn.BatchNorm1d(3).eval()
    assert bn(torch.randn(1, 3)).shape == (1, 3)
