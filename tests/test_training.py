"""The training loop, the MLP, the quadratic model, ghost BN and inference mixing,
and the hand-derived backward passes."""

import numpy as np
import pytest
import torch

import normlib.functional as F
from normlib import backward, nn, quadratic
from normlib.models import MLP
from normlib.train import accuracy, fit, minibatches, seed_everything


def test_hand_derived_batch_norm_backward_matches_autograd():
    x = torch.randn(6, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(6, 3, 4, 2, dtype=torch.float64)
    F.batch_norm(x, None, None, w, b, training=True).backward(dy)
    dx, dw, db = backward.batch_norm_backward(dy, x.detach(), w.detach())
    for ours, theirs in ((dx, x.grad), (dw, w.grad), (db, b.grad)):
        torch.testing.assert_close(ours, theirs)


def test_hand_derived_layer_norm_backward_matches_autograd():
    x = torch.randn(5, 4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(5, 4, 6, dtype=torch.float64)
    F.layer_norm(x, (6,), w, b).backward(dy)
    dx, dw, db = backward.layer_norm_backward(dy, x.detach(), (6,), w.detach())
    for ours, theirs in ((dx, x.grad), (dw, w.grad), (db, b.grad)):
        torch.testing.assert_close(ours, theirs)


def test_ghost_batch_norm_normalizes_each_ghost_batch():
    x = torch.randn(12, 3) * 3 + 2
    rm, rv = torch.zeros(3), torch.ones(3)
    out = F.ghost_batch_norm(x, 4, rm, rv, training=True, momentum=1.0)
    for chunk_in, chunk_out in zip(x.split(4), out.split(4)):
        torch.testing.assert_close(chunk_out, F.batch_norm(chunk_in, None, None, training=True))
    chunks = x.split(4)
    torch.testing.assert_close(rm, torch.stack([c.mean(0) for c in chunks]).mean(0))
    torch.testing.assert_close(rv, torch.stack([c.var(0) for c in chunks]).mean(0))
    # ghost batch as large as the batch: plain batch norm
    torch.testing.assert_close(F.ghost_batch_norm(x, 12, None, None, training=True),
                               F.batch_norm(x, None, None, training=True))
    torch.autograd.gradcheck(lambda t: F.ghost_batch_norm(t, 3, None, None, training=True),
                             torch.randn(9, 2, dtype=torch.float64, requires_grad=True))


def test_mixed_batch_norm_interpolates_between_population_and_batch():
    x = torch.randn(8, 4, 3) + 1
    rm, rv = torch.randn(4), torch.rand(4) + 0.5
    torch.testing.assert_close(F.mixed_batch_norm(x, rm, rv, 0.0), F.batch_norm(x, rm, rv))
    torch.testing.assert_close(F.mixed_batch_norm(x, rm, rv, 1.0), F.batch_norm(x, None, None, training=True))
    # the mixed variance is the variance of the mixture of the two distributions
    alpha = 0.3
    var_b, mean_b = torch.var_mean(x, dim=(0, 2), correction=0)
    second_moment = alpha * (var_b + mean_b**2) + (1 - alpha) * (rv + rm**2)
    mean = alpha * mean_b + (1 - alpha) * rm
    expected = F.batch_norm(x, mean, second_moment - mean**2)
    torch.testing.assert_close(F.mixed_batch_norm(x, rm, rv, alpha), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="alpha: expected a number in"):
        F.mixed_batch_norm(x, rm, rv, 1.5)
    torch.autograd.gradcheck(lambda t: F.mixed_batch_norm(t, rm.double(), rv.double(), 0.4),
                             torch.randn(5, 4, dtype=torch.float64, requires_grad=True))


def test_batch_norm_module_extensions():
    bn = nn.BatchNorm1d(3, ghost_batch_size=2)
    x = torch.randn(6, 3)
    torch.testing.assert_close(bn(x), F.ghost_batch_norm(x, 2, None, None, training=True))
    bn.eval()
    bn.inference_alpha = 0.5
    torch.testing.assert_close(bn(x), F.mixed_batch_norm(x, bn.running_mean, bn.running_var, 0.5))
    with pytest.raises(ValueError, match="ghost_batch_size: expected a positive integer"):
        nn.BatchNorm1d(3, ghost_batch_size=0)


def test_gradient_descent_threshold_is_two_over_lambda_max():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)) * np.array([1.0, 5.0, 0.2]) + np.array([0.0, 3.0, 0.0])
    y = X @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=200)
    lam = np.linalg.eigvalsh(quadratic.hessian(X))
    predicted = 2 / lam[-1]
    assert quadratic.gradient_descent(X, y, 0.98 * predicted, 500)[-1] < quadratic.gradient_descent(X, y, 0.98 * predicted, 500)[0]
    assert not np.isfinite(quadratic.gradient_descent(X, y, 1.1 * predicted, 3000)[-1]) or \
        quadratic.gradient_descent(X, y, 1.1 * predicted, 3000)[-1] > 1e10
    observed = quadratic.divergence_threshold(X, y, steps=2000)
    assert abs(observed / predicted - 1) < 0.02
    assert quadratic.steps_to_reach([5, 3, 1, 0.5], 1.0) == 2
    assert quadratic.steps_to_reach([5, 3], 1.0) is None


def test_fit_trains_an_mlp_and_records_history():
    g = seed_everything(0)
    x = torch.randn(256, 10)
    y = (x[:, 0] > 0).long()
    model = MLP([10, 16, 2], activation="relu", norm=nn.BatchNorm1d)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    history = fit(model, (x, y), loss_fn=lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
                  optimizer=opt, steps=60, batch_size=32, generator=g, progress=False,
                  evaluate=lambda m: {"acc": accuracy(m, x, y)}, eval_every=20)
    assert list(history.steps_of("acc")) == [0, 20, 40, 60]
    assert history.last("acc") > 0.9 and not history.diverged
    logits, pre = model(x, return_preactivations=True)
    assert logits.shape == (256, 2) and pre[0].shape == (256, 16)


def test_fit_stops_when_the_loss_diverges():
    g = seed_everything(0)
    x, y = torch.randn(64, 4), torch.randn(64)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e6)
    history = fit(model, (x, y), loss_fn=lambda m, b: ((m(b[0]).squeeze(1) - b[1]) ** 2).mean(),
                  optimizer=opt, steps=200, batch_size=64, generator=g, progress=False)
    assert history.diverged and history.steps < 200


def test_minibatches_cover_the_data_each_epoch():
    data = (torch.arange(10),)
    batches = minibatches(data, 5, torch.Generator().manual_seed(0))
    seen = torch.cat([next(batches)[0] for _ in range(2)])
    assert sorted(seen.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        next(minibatches(data, 11, torch.Generator()))
