"""Power iteration, the spectral-norm and weight-norm parametrizations, against torch."""

import re

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from normlib.spectral import power_iteration, spectral_norm, spectral_norm_estimates, weight_norm


def matrix_with_gap(m, n, top=5.0, second=1.0):
    """A random matrix with singular values top, second, ... (a clear spectral gap)."""
    q1, _ = torch.linalg.qr(torch.randn(m, m, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    k = min(m, n)
    s = torch.cat([torch.tensor([top, second]), torch.linspace(0.9, 0.1, k - 2)]).double()
    return q1[:, :k] @ torch.diag(s) @ q2[:, :k].T


def test_power_iteration_converges_to_top_singular_value():
    W = matrix_with_gap(7, 5)
    sigma, u, v = power_iteration(W, torch.randn(7, dtype=torch.float64), n_iter=30)
    torch.testing.assert_close(sigma, torch.linalg.svdvals(W)[0])
    torch.testing.assert_close(W @ v, sigma * u)  # v, u are the top singular vectors
    assert abs(u.norm() - 1) < 1e-12 and abs(v.norm() - 1) < 1e-12


def test_power_iteration_error_shrinks_by_squared_gap_ratio():
    W = matrix_with_gap(6, 6, top=2.0, second=1.0)
    u0 = torch.randn(6, dtype=torch.float64)
    true = torch.linalg.svdvals(W)[0]
    errors = [abs(power_iteration(W, u0, k)[0] - true).item() for k in (4, 5, 6)]
    ratios = [b / a for a, b in zip(errors, errors[1:])]
    # sigma's error is quadratic in the vectors' error: asymptotic rate (sigma2/sigma1)^4 = 1/16
    assert all(0.03 < r < 0.1 for r in ratios), ratios


def test_sigma_is_differentiable_with_gradient_u_vT():
    W = matrix_with_gap(4, 3).requires_grad_()
    sigma, u, v = power_iteration(W, torch.randn(4, dtype=torch.float64), n_iter=50)
    sigma.backward()
    torch.testing.assert_close(W.grad, torch.outer(u, v))


@pytest.mark.parametrize("make", [lambda: nn.Linear(6, 4), lambda: nn.Conv2d(3, 5, 3),
                                  lambda: nn.ConvTranspose2d(3, 5, 3)])
def test_parametrization_matches_torch(make):
    ours, theirs = make(), make()
    theirs.load_state_dict(ours.state_dict())
    spectral_norm(ours)
    parametrizations.spectral_norm(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    # eval mode with the same stored vectors: identical weights
    ours.load_state_dict(theirs.state_dict())
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours.weight, theirs.weight)
    # training mode: each runs its own power iteration; both converge to W / sigma_max
    ours.train(), theirs.train()
    for _ in range(30):
        w_ours, w_theirs = ours.weight, theirs.weight
    torch.testing.assert_close(w_ours, w_theirs, atol=1e-4, rtol=1e-3)


def test_parametrized_layer_has_unit_spectral_norm_and_tracks_training():
    torch.manual_seed(0)
    layer = spectral_norm(nn.Linear(8, 8))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(20):
        loss = layer(torch.randn(16, 8)).pow(2).mean() - layer.weight.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    original = layer.parametrizations.weight.original.detach()
    sigma = torch.dot(layer.parametrizations.weight[0]._u, original @ layer.parametrizations.weight[0]._v)
    assert abs(sigma / torch.linalg.svdvals(original)[0] - 1) < 0.01
    assert abs(torch.linalg.svdvals(layer.weight.detach())[0] - 1) < 0.01


def test_vector_weight_is_l2_normalized():
    layer = spectral_norm(nn.Linear(3, 4), name="bias")
    torch.testing.assert_close(layer.bias.norm(), torch.tensor(1.0))


@pytest.mark.parametrize("call,error,message", [
    (lambda: power_iteration(torch.randn(3, 4), torch.randn(4)), ValueError, "u: expected shape (3,)"),
    (lambda: power_iteration(torch.randn(3), torch.randn(3)), ValueError, "W: expected 2 to 2 dimensions"),
    (lambda: power_iteration(torch.randn(3, 4), torch.randn(3), n_iter=0), ValueError, "n_iter: expected a positive integer"),
    (lambda: spectral_norm(nn.Linear(2, 2), name="nope"), ValueError, "name: module Linear has no tensor parameter 'nope'"),
    (lambda: spectral_norm(nn.Linear(2, 2), eps=0.0), ValueError, "eps: expected a positive finite number"),
    (lambda: spectral_norm("layer"), TypeError, "module: expected an nn.Module, got str"),
])
def test_bad_input(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


@pytest.mark.parametrize("dim", [0, 1, None])
def test_weight_norm_matches_torch(dim):
    ours, theirs = nn.Conv2d(3, 5, 3), nn.Conv2d(3, 5, 3)
    theirs.load_state_dict(ours.state_dict())
    weight_norm(ours, dim=dim)
    parametrizations.weight_norm(theirs, dim=dim)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, theirs.state_dict()[key])
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(ours(x), theirs(x))
    ours(x).square().sum().backward()
    theirs(x).square().sum().backward()
    g_ours, v_ours = ours.parametrizations.weight.original0.grad, ours.parametrizations.weight.original1.grad
    torch.testing.assert_close(g_ours, theirs.parametrizations.weight.original0.grad)
    torch.testing.assert_close(v_ours, theirs.parametrizations.weight.original1.grad)


def test_weight_norm_gradient_is_orthogonal_to_the_weight():
    """Salimans & Kingma: the gradient with respect to v is orthogonal to w (per output unit)."""
    layer = weight_norm(nn.Linear(6, 4).double())
    layer(torch.randn(5, 6, dtype=torch.float64)).sin().sum().backward()
    v_grad, w = layer.parametrizations.weight.original1.grad, layer.weight.detach()
    torch.testing.assert_close((v_grad * w).sum(1), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)


def test_weight_norm_gradcheck():
    layer = weight_norm(nn.Linear(3, 2).double())
    g, v = layer.parametrizations.weight.original0, layer.parametrizations.weight.original1
    x = torch.randn(4, 3, dtype=torch.float64)
    norm = layer.parametrizations.weight[0]
    assert torch.autograd.gradcheck(lambda g, v: norm(g, v) @ x.T, (g.detach().requires_grad_(), v.detach().requires_grad_()))


def test_spectral_norm_estimates_report_the_next_forward_estimate():
    torch.manual_seed(0)
    model = nn.Sequential(spectral_norm(nn.Linear(8, 16)), nn.ReLU(), nn.Linear(16, 16), spectral_norm(nn.Linear(16, 1)))
    rows = spectral_norm_estimates(model)
    assert [name for name, _, _ in rows] == ["0.weight", "3.weight"]  # the plain layer is skipped
    for (_, tracked, exact), layer in zip(rows, (model[0], model[3])):
        raw = layer.parametrizations.weight.original.detach()
        assert exact == pytest.approx(torch.linalg.svdvals(raw)[0].item(), rel=1e-6)
        assert tracked <= exact * (1 + 1e-6)  # a Rayleigh quotient of unit vectors
    stored = model[0].parametrizations.weight[0]._u.clone()
    spectral_norm_estimates(model)
    torch.testing.assert_close(model[0].parametrizations.weight[0]._u, stored)  # vectors left as they are
    with torch.no_grad():  # move the weight, as an optimizer step would
        model[0].parametrizations.weight.original.add_(0.1 * torch.randn(16, 8))
    _, tracked, _ = spectral_norm_estimates(model)[0]
    model.train()
    normalized = model[0].weight.detach()  # a training-mode pass: one round from the stored vector
    torch.testing.assert_close(normalized * tracked, model[0].parametrizations.weight.original.detach())


@pytest.mark.parametrize("call, error, message", [
    (lambda: weight_norm(nn.Linear(2, 2), dim=2), ValueError, "dim: expected None or an int in [-2, 1], got 2"),
    (lambda: weight_norm(nn.Linear(2, 2), name="nope"), ValueError, "name: module Linear has no tensor parameter 'nope'"),
    (lambda: weight_norm(3), TypeError, "module: expected an nn.Module, got int"),
])
def test_weight_norm_rejects_bad_arguments(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()
