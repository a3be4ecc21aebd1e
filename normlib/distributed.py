"""Batch statistics across processes: the maths of :class:`normlib.nn.SyncBatchNorm`, on top of
PyTorch's own ``torch.distributed`` (the book's process helpers live in
:mod:`normlib.book.processes`).

The per-channel statistics of each process's slice are merged exactly and stably: every process
contributes its count, mean and sum of squared deviations ``M2`` (never raw sums of squares), and
the merge is Chan et al.'s pairwise formula
``M2 = sum_k M2_k + sum_k n_k (mean_k - mean)^2``. Derived in ``chapters/02_batch_norm.ipynb``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from normlib import _validation as V
from normlib import reference

__all__ = ["is_distributed", "rank", "world_size", "merge_statistics", "sync_batch_norm"]


def is_distributed(group=None) -> bool:
    """True when a process group with more than one process is in use.
    Used in ``chapters/02_batch_norm.ipynb``."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank(group=None) -> int:
    """This process's rank (0 without a process group). Used in ``chapters/02_batch_norm.ipynb``."""
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def world_size(group=None) -> int:
    """The number of processes (1 without a process group). Used in ``chapters/02_batch_norm.ipynb``."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def merge_statistics(counts: torch.Tensor, means: torch.Tensor, m2s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge per-part ``(K,)`` counts, ``(K, C)`` means and ``(K, C)`` sums of squared deviations
    into the total count, mean and ``M2`` of the union (parts may be empty).
    Derived in ``chapters/02_batch_norm.ipynb``."""
    total = counts.sum()
    weights = (counts / total.clamp_min(1)).unsqueeze(1)
    mean = (weights * means).sum(0)
    m2 = m2s.sum(0) + (counts.unsqueeze(1) * (means - mean).square()).sum(0)
    return total, mean, m2


def _local_statistics(x: torch.Tensor, dims: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    count = x.numel() // x.shape[1]
    if count == 0:
        zeros = x.new_zeros(x.shape[1])
        return torch.tensor(0.0, dtype=x.dtype), zeros, zeros
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    return torch.tensor(float(count), dtype=x.dtype), mean, var * count


def _all_gather(t: torch.Tensor, group) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.stack(parts)


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, group):
        dims = V.batch_axes(x.dim())
        sd = V.stats_dtype(x.dtype)
        xs = x.to(sd)
        count, mean, m2 = _local_statistics(xs, dims)
        if is_distributed(group):
            # Agree on the channel count first: a mismatch would make the next gather hang or fail opaquely.
            channels = _all_gather(torch.tensor([x.shape[1]]), group).flatten().tolist()
            if len(set(channels)) > 1:
                raise ValueError(f"input: expected the same number of channels on every process, got {channels} "
                                 f"(process {rank(group)} has {x.shape[1]})")
            gathered = _all_gather(torch.cat([count.view(1), mean, m2]), group)
            count, mean, m2 = merge_statistics(gathered[:, 0], gathered[:, 1:1 + x.shape[1]], gathered[:, 1 + x.shape[1]:])
        total = int(count.item())
        if total == 1:
            raise ValueError(f"input: expected more than 1 value per channel over all processes when training, "
                             f"got {total} (shape {tuple(x.shape)} on process {rank(group)})")
        view = lambda p: V.per_channel(p, x.dim())  # noqa: E731
        invstd = torch.rsqrt(m2 / max(total, 1) + eps)
        x_hat = (xs - view(mean)) * view(invstd)
        y = reference._affine(x_hat, weight, bias, view)
        ctx.save_for_backward(x_hat, invstd, weight)
        ctx.group, ctx.total, ctx.has_bias, ctx.dims = group, max(total, 1), bias is not None, dims
        unbiased_var = m2 / (total - 1) if total > 1 else torch.full_like(m2, float("nan"))
        ctx.mark_non_differentiable(mean, unbiased_var)
        return y.to(x.dtype), mean, unbiased_var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        x_hat, invstd, weight = ctx.saved_tensors
        view = lambda p: V.per_channel(p, x_hat.dim())  # noqa: E731
        dys = dy.to(x_hat.dtype)
        g = dys * view(weight.to(x_hat.dtype)) if weight is not None else dys
        # The two per-channel sums of the BN gradient run over the whole (global) batch.
        sums = torch.stack([g.sum(ctx.dims), (g * x_hat).sum(ctx.dims)])
        if is_distributed(ctx.group):
            dist.all_reduce(sums, group=ctx.group)
        mean_g, mean_g_xhat = (sums / ctx.total).unbind(0)
        dx = view(invstd) * (g - view(mean_g) - x_hat * view(mean_g_xhat))
        dweight = (dys * x_hat).sum(ctx.dims).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        dbias = dys.sum(ctx.dims).to(dy.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx.to(dy.dtype), dweight, dbias, None, None


def sync_batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                    weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, momentum: float = 0.1,
                    eps: float = 1e-5, process_group=None) -> torch.Tensor:
    """Batch normalization in training mode with the statistics of the batch formed by the slices
    of every process in ``process_group`` (the default group if ``None``; without an initialized
    group this is :func:`normlib.functional.batch_norm`). Running statistics are updated with
    the global mean and unbiased variance; the backward pass all-reduces its two per-channel sums.
    The gradients of ``weight`` and ``bias`` are this process's share (DistributedDataParallel sums
    or averages them across processes). Derived in ``chapters/02_batch_norm.ipynb``."""
    V.check_tensor(input, "input", min_dim=2)
    V.check_eps(eps)
    V.check_momentum(momentum)
    V.check_per_channel(input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    y, mean, unbiased_var = _SyncBatchNormFunction.apply(input, weight, bias, eps, process_group)
    if not unbiased_var.isnan().any():   # an empty batch everywhere leaves the running statistics alone
        reference._update_running(running_mean, mean, momentum)
        reference._update_running(running_var, unbiased_var, momentum)
    return y


