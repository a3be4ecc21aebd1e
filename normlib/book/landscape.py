"""Santurkar et al.'s (2018) measurements of the loss landscape along a training trajectory.

At the current parameters ``w`` with gradient ``g`` of the loss on a batch, the loss and its
gradient are evaluated at ``w - s g`` for a range of step sizes ``s``:

* the **loss range**, max minus min of ``L(w - s g)``: how much the loss changes along the step
  an optimizer would take (small: the loss is Lipschitz there);
* the **gradient change** ("gradient predictiveness"), the largest ``||grad L(w - s g) - grad L(w)||``:
  how far the gradient at the start predicts the gradient along the step;
* the **effective beta-smoothness**, the largest ``||grad L(w - s g) - grad L(w)|| / ||s g||``: a
  local Lipschitz constant of the gradient.

Used in ``chapters/02_batch_norm.ipynb``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["along_gradient"]


def _gradient(model: nn.Module, loss_fn, batch) -> tuple[float, list[torch.Tensor]]:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model, batch)
    return loss.item(), [g.detach() for g in torch.autograd.grad(loss, params)]


def along_gradient(model: nn.Module, loss_fn: Callable[[nn.Module, tuple], torch.Tensor], batch: tuple,
                   step_sizes: Sequence[float]) -> dict[str, float]:
    """The loss range, gradient change and effective beta-smoothness along ``-grad L`` at the
    model's current parameters (see the module's docstring), over ``step_sizes`` (positive).
    Works on a copy: the model's parameters and buffers (BN's running statistics) are untouched.
    The model is evaluated in the mode it is in (training mode: batch statistics)."""
    steps = [float(s) for s in step_sizes]
    if not steps or any(not s > 0 for s in steps):
        raise ValueError(f"step_sizes: expected positive numbers, got {list(step_sizes)!r}")
    probe = copy.deepcopy(model)
    params = [p for p in probe.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    loss0, grad0 = _gradient(probe, loss_fn, batch)
    grad_norm = torch.sqrt(sum(g.pow(2).sum() for g in grad0)).item()
    losses, changes, smoothness = [loss0], [], []
    for s in steps:
        with torch.no_grad():
            for p, p0, g in zip(params, start, grad0):
                p.copy_(p0 - s * g)
        loss, grad = _gradient(probe, loss_fn, batch)
        change = torch.sqrt(sum((a - b).pow(2).sum() for a, b in zip(grad, grad0))).item()
        losses.append(loss)
        changes.append(change)
        smoothness.append(change / (s * grad_norm) if grad_norm > 0 else 0.0)
    return {"loss_range": max(losses) - min(losses), "gradient_change": max(changes),
            "beta_smoothness": max(smoothness), "gradient_norm": grad_norm}
