"""GradNorm (Chen et al. 2018): the weights' gradient is the derivative of L_grad, the network's
is that of the weighted loss, the weights keep summing to the number of tasks, and on a
two-task problem with very different loss scales the small task's weight grows."""

import pytest
import torch
from torch import nn as tnn

from normlib.gradnorm import GradNorm


def two_task_model():
    torch.manual_seed(0)
    trunk = tnn.Sequential(tnn.Linear(5, 8), tnn.ReLU(), tnn.Linear(8, 8), tnn.ReLU())
    heads = tnn.ModuleList(tnn.Linear(8, 1) for _ in range(2))
    return trunk, heads


def task_losses(trunk, heads, x, ys):
    h = trunk(x)
    return torch.stack([((head(h).squeeze(-1) - y) ** 2).mean() for head, y in zip(heads, ys)])


def test_gradients_of_the_weights_and_of_the_network_follow_the_definitions():
    trunk, heads = two_task_model()
    x = torch.randn(32, 5)
    ys = [torch.randn(32), 10 * torch.randn(32)]
    gradnorm = GradNorm(2, alpha=0.5)
    with torch.no_grad():
        gradnorm.weights.copy_(torch.tensor([1.5, 0.5]))
    shared = trunk[2].weight
    losses = task_losses(trunk, heads, x, ys)
    gradnorm.initial_losses.copy_(losses.detach() * torch.tensor([2.0, 1.2]))  # a later step
    total = gradnorm(losses, shared)
    total.backward()
    # by hand: G_i = w_i ||grad_W L_i||, target = mean(G) r_i^alpha, r from L_i / L_i(0)
    trunk2, heads2 = two_task_model()
    losses2 = task_losses(trunk2, heads2, x, ys)
    norms = torch.stack([torch.autograd.grad(l, trunk2[2].weight, retain_graph=True)[0].norm() for l in losses2])
    w = torch.tensor([1.5, 0.5])
    g = w * norms
    ratios = losses2.detach() / (losses2.detach() * torch.tensor([2.0, 1.2]))
    target = g.mean() * (ratios / ratios.mean()) ** 0.5
    torch.testing.assert_close(gradnorm.gradient_norms, g)
    torch.testing.assert_close(gradnorm.targets, target)
    torch.testing.assert_close(gradnorm.weights.grad, torch.sign(g - target) * norms)
    # the network's gradient is that of sum w_i L_i: the weights' loss does not reach it
    (w * losses2).sum().backward()
    for p, p2 in zip([*trunk.parameters(), *heads.parameters()], [*trunk2.parameters(), *heads2.parameters()]):
        torch.testing.assert_close(p.grad, p2.grad)


def test_equal_pulls_and_rates_give_a_zero_balancing_loss_and_renormalize_keeps_the_sum():
    trunk, heads = two_task_model()
    x = torch.randn(16, 5)
    gradnorm = GradNorm(2)
    losses = task_losses(trunk, heads, x, [torch.randn(16), torch.randn(16)])
    total = gradnorm(losses, trunk[2].weight)  # first call: L(0) = L, so r = 1
    g = gradnorm.gradient_norms
    torch.testing.assert_close(gradnorm.targets, g.mean().expand(2))
    torch.testing.assert_close(total, losses.sum() + (g - g.mean()).abs().sum())
    with torch.no_grad():
        gradnorm.weights.copy_(torch.tensor([3.0, 1.0]))
    gradnorm.renormalize_()
    torch.testing.assert_close(gradnorm.weights.detach(), torch.tensor([1.5, 0.5]))
    assert "num_tasks=2, alpha=1.5" in repr(gradnorm)


def test_the_small_task_gains_weight_when_the_other_task_dominates_the_gradient():
    trunk, heads = two_task_model()
    gradnorm = GradNorm(2, alpha=0.12)
    params = [*trunk.parameters(), *heads.parameters(), *gradnorm.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 5, generator=g)
    direction = torch.randn(5, generator=g)
    ys = [torch.tanh(x @ direction), 100 * torch.tanh(x @ direction.flip(0))]  # scales 1, 100
    for _ in range(100):
        total = gradnorm(task_losses(trunk, heads, x, ys), trunk[2].weight)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        gradnorm.renormalize_()
    w = gradnorm.weights.detach()
    assert w.sum().item() == pytest.approx(2.0)
    assert w[0] > 1.5 > 0.5 > w[1], w  # the scale-1 task now pulls with a larger weight


def test_bad_arguments_are_named():
    trunk, heads = two_task_model()
    with pytest.raises(ValueError, match="num_tasks: expected a positive integer"):
        GradNorm(0)
    with pytest.raises(ValueError, match="alpha: expected a number in"):
        GradNorm(2, alpha=-1.0)
    gradnorm = GradNorm(2)
    with pytest.raises(ValueError, match=r"losses: expected shape \(2,\), one loss per task"):
        gradnorm(torch.ones(3, requires_grad=True), trunk[2].weight)
    with pytest.raises(ValueError, match="shared: expected a parameter of the shared layers"):
        gradnorm(torch.ones(2, requires_grad=True), torch.ones(3))


def test_multitask_regression_scales_and_shared_structure():
    from normlib.book.data import multitask_regression

    (x, y), (x_test, y_test) = multitask_regression([1.0, 100.0], 500, 200, seed=0, inputs=30, outputs=8)
    assert x.shape == (500, 30) and y.shape == (500, 2, 8) and y_test.shape == (200, 2, 8)
    # each task is sigma_i * tanh(...): the ratio of the scales is the ratio of the sigmas
    assert (y[:, 1].abs() <= 100).all() and y[:, 1].std() / y[:, 0].std() == pytest.approx(100, rel=0.2)
    # B is shared (std 10 against eps's 3.5): the tasks' normalized targets are strongly correlated
    a, b = y[:, 0].flatten(), (y[:, 1] / 100).flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.7
    # the same seed gives the same data; the test set is drawn apart from the training set
    assert torch.equal(multitask_regression([1.0, 100.0], 500, 200, 0, 30, 8)[0][1], y)
    assert not torch.equal(x[:200], x_test)
    with pytest.raises(ValueError, match="sigmas: expected a non-empty sequence of positive scales"):
        multitask_regression([1.0, -1.0], 10, 10, 0)


def test_multitask_mlp_shapes_losses_and_shared_layer():
    from normlib.book.models import MultitaskMLP

    torch.manual_seed(0)
    model = MultitaskMLP(inputs=6, outputs=3, tasks=4, hidden=5, depth=3)
    x, y = torch.randn(7, 6), torch.randn(7, 4, 3)
    out = model(x)
    assert out.shape == (7, 4, 3)
    torch.testing.assert_close(model.task_losses(x, y), ((out - y) ** 2).mean(dim=(0, 2)))
    assert model.shared is model.trunk[-2].weight and model.shared.shape == (5, 5)
    assert sum(isinstance(m, tnn.Linear) for m in model.trunk) == 3
    with pytest.raises(ValueError, match="tasks: expected a positive integer"):
        MultitaskMLP(6, 3, tasks=0)


def test_the_weights_gradient_is_the_papers_second_order_one_and_checkpoints_restore():
    """The paper differentiates ||grad_W (w_i L_i)|| through autograd (create_graph); with the
    norm of grad_W L_i held constant the weights' gradient is the same."""
    trunk, heads = two_task_model()
    x, ys = torch.randn(32, 5), [torch.randn(32), 5 * torch.randn(32)]
    gradnorm = GradNorm(2, alpha=1.0)
    with torch.no_grad():
        gradnorm.weights.copy_(torch.tensor([1.3, -0.3]))  # a negative weight too: G = |w| n
    shared = trunk[2].weight
    losses = task_losses(trunk, heads, x, ys)
    gradnorm.initial_losses.copy_(losses.detach() * torch.tensor([1.5, 3.0]))
    gradnorm(losses, shared).backward()
    ours = gradnorm.weights.grad.clone()
    # the literal version: G_i = ||grad_W (w_i L_i)|| with a graph through w_i
    w = torch.tensor([1.3, -0.3], requires_grad=True)
    losses = task_losses(trunk, heads, x, ys)
    g = torch.stack([torch.autograd.grad(w[i] * losses[i], shared, create_graph=True)[0].norm() for i in range(2)])
    ratios = losses.detach() / (losses.detach() * torch.tensor([1.5, 3.0]))
    target = (g.mean() * (ratios / ratios.mean())).detach()
    (g - target).abs().sum().backward()
    torch.testing.assert_close(ours, w.grad)
    # a used GradNorm's state dict (weights and L(0)) loads into a new one
    fresh = GradNorm(2, alpha=1.0)
    fresh.load_state_dict(gradnorm.state_dict())
    torch.testing.assert_close(fresh.initial_losses, gradnorm.initial_losses)
    assert GradNorm(3).initial_losses.isnan().all()  # not recorded before the first call
