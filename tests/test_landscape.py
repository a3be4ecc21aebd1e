"""Santurkar et al.'s landscape measurements, checked on a quadratic loss where they have
closed forms."""

import pytest
import torch

from normlib import nn
from normlib.book.landscape import along_gradient


def test_along_gradient_matches_the_closed_form_of_a_quadratic():
    torch.manual_seed(0)
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)
    model = torch.nn.Linear(3, 1, bias=False).double()
    loss_fn = lambda m, b: 0.5 * (m(b[0]) - b[1]).pow(2).mean()  # noqa: E731
    w = model.weight.detach().clone().flatten()
    hessian = x.T @ x / len(x)
    loss = lambda v: 0.5 * (x @ v[:, None] - y).pow(2).mean().item()  # noqa: E731
    g = hessian @ w - (x.T @ y).flatten() / len(x)
    steps = [0.05, 0.1, 0.4]
    out = along_gradient(model, loss_fn, (x, y), steps)
    values = [loss(w)] + [loss(w - s * g) for s in steps]
    assert out["loss_range"] == pytest.approx(max(values) - min(values), rel=1e-10)
    # the gradient moves by s H g: largest at the largest step; its ratio to ||s g|| is constant
    assert out["gradient_change"] == pytest.approx(0.4 * (hessian @ g).norm().item(), rel=1e-10)
    assert out["beta_smoothness"] == pytest.approx(((hessian @ g).norm() / g.norm()).item(), rel=1e-10)
    assert out["gradient_norm"] == pytest.approx(g.norm().item(), rel=1e-10)
    torch.testing.assert_close(model.weight.detach().flatten(), w)  # the model is untouched


def test_along_gradient_leaves_batch_norm_statistics_alone_and_checks_steps():
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), nn.BatchNorm1d(5), torch.nn.Linear(5, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = (torch.randn(8, 4), torch.randn(8, 1))
    out = along_gradient(model, lambda m, b: (m(b[0]) - b[1]).pow(2).mean(), batch, [0.1, 1.0])
    assert out["loss_range"] >= 0 and out["gradient_change"] >= 0
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    with pytest.raises(ValueError, match="step_sizes: expected positive numbers"):
        along_gradient(model, lambda m, b: m(b[0]).sum(), batch, [0.0])
    with pytest.raises(ValueError, match="step_sizes"):
        along_gradient(model, lambda m, b: m(b[0]).sum(), batch, [])
