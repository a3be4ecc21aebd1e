"""GradNorm (Chen et al. 2018): loss weights of a multitask network learned so that every
task's gradient at the shared layers has the size its training rate calls for.

With task losses ``L_i(t)`` and weights ``w_i(t)`` (starting at 1), the network trains on
``sum_i w_i L_i``. At a shared weight ``W`` (the last shared layer), task ``i`` pulls with
``G_i = ||grad_W w_i L_i|| = |w_i| ||grad_W L_i||``. A task that has learned little, relative to
its loss at step 0 (``r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0))`` above 1), should pull
harder: the weights descend ``L_grad = sum_i |G_i - mean_j(G_j) r_i^alpha|``, with the
target ``mean_j(G_j) r_i^alpha`` held constant, and are then rescaled to sum to the
number of tasks. ``alpha`` sets how strongly the training rates are evened out (0: equal
gradient norms). As in the paper, nothing keeps a weight positive: a weight learning rate
comparable to the smallest weight can push it through zero.

Derived in ``chapters/12_gradnorm.ipynb``.
"""

from __future__ import annotations

import torch
from torch import nn

from normlib import _validation as V

__all__ = ["GradNorm"]


class GradNorm(nn.Module):
    """The task weights of GradNorm and their balancing loss.

    ``weights`` is a parameter of ``num_tasks`` ones. One call per training step::

        losses = torch.stack([loss_1, loss_2])           # the task losses, shape (num_tasks,)
        total = gradnorm(losses, shared=model.trunk[-1].weight)
        optimizer.zero_grad(); total.backward(); optimizer.step()   # optimizer holds both
        gradnorm.renormalize_()

    ``total`` is ``sum_i w_i L_i`` with the weights held constant (its gradient trains the
    network) plus ``L_grad``, whose gradient reaches the weights alone: ``G_i`` is computed
    as ``|w_i|`` times the (constant) norm of ``grad_W L_i``, one partial backward pass to
    ``W`` per task and no second derivative. The first call records ``L_i(0)``
    (``initial_losses``, a buffer: a checkpoint restores it). After each call,
    ``gradient_norms`` holds the ``G_i`` and ``targets`` their targets, for plotting.
    Derived in ``chapters/12_gradnorm.ipynb``."""

    def __init__(self, num_tasks: int, alpha: float = 1.5):
        super().__init__()
        V.check_positive_int(num_tasks, "num_tasks")
        V.check_number(alpha, "alpha", low=0.0)
        self.num_tasks, self.alpha = num_tasks, float(alpha)
        self.weights = nn.Parameter(torch.ones(num_tasks))
        self.register_buffer("initial_losses", torch.full((num_tasks,), float("nan")))
        self.gradient_norms = self.targets = None

    def forward(self, losses: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        V.check_tensor(losses, "losses")
        if losses.shape != (self.num_tasks,):
            raise ValueError(f"losses: expected shape ({self.num_tasks},), one loss per task, "
                             f"got {tuple(losses.shape)}")
        if not isinstance(shared, torch.Tensor) or not shared.requires_grad:
            raise ValueError("shared: expected a parameter of the shared layers (a tensor that "
                             "requires grad)")
        if self.initial_losses.isnan().any():  # the first step
            self.initial_losses.copy_(losses.detach())
        # ||grad_W L_i|| for each task: constants for the weights' loss
        norms = torch.stack([torch.linalg.vector_norm(torch.autograd.grad(loss, shared, retain_graph=True)[0])
                             for loss in losses])
        gradient_norms = self.weights.abs() * norms.to(self.weights.dtype)
        with torch.no_grad():
            ratios = losses.detach() / self.initial_losses
            rates = ratios / ratios.mean()  # r_i: above 1 for a task that trains slower
            targets = gradient_norms.mean() * rates.to(self.weights.dtype) ** self.alpha
        self.gradient_norms, self.targets = gradient_norms.detach(), targets
        balancing = (gradient_norms - targets).abs().sum()
        return (self.weights.detach() * losses).sum() + balancing

    @torch.no_grad()
    def renormalize_(self) -> None:
        """Rescale the weights to sum to the number of tasks (after each optimizer step)."""
        self.weights.mul_(self.num_tasks / self.weights.sum())

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, alpha={self.alpha}"
