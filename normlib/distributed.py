"""Batch statistics across processes, and the few helpers the training loop needs to run
under ``torchrun`` (PyTorch's own ``torch.distributed``; nothing home-made).

The per-channel statistics of each process's slice are merged exactly and stably: every process
contributes its count, mean and sum of squared deviations ``M2`` (never raw sums of squares), and
the merge is Chan et al.'s pairwise formula
``M2 = sum_k M2_k + sum_k n_k (mean_k - mean)^2``. Derived in ``chapters/02_batch_norm.ipynb``.
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from normlib import _checks as C
from normlib import functional as F

__all__ = ["init_from_environment", "is_distributed", "rank", "world_size", "merge_statistics", "sync_batch_norm",
           "all_reduce_mean", "broadcast_from_rank_0", "spawn", "batch_norm_on_slices"]


def init_from_environment() -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1),
    unless a group is already initialized: NCCL for CUDA tensors and gloo for CPU tensors on a GPU
    machine (so a model left on the CPU still trains), gloo alone elsewhere. Returns whether this
    is a distributed run."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            backend = "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend)
    return is_distributed()


def is_distributed(group=None) -> bool:
    """True when a process group with more than one process is in use."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank(group=None) -> int:
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def world_size(group=None) -> int:
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


def all_reduce_mean(value: float) -> float:
    """The mean of a number over all processes (the number itself in a single process)."""
    if not is_distributed():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / world_size()


def broadcast_from_rank_0(obj):
    """Rank 0's ``obj`` on every process (``obj`` itself in a single process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_gather(t: torch.Tensor, group) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.stack(parts)


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, group, statistics_out):
        dims = [0, *range(2, x.dim())]
        sd = torch.promote_types(x.dtype, torch.float32)  # statistics in fp32 at least
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
        if total <= 1:
            raise ValueError(f"input: expected more than 1 value per channel over all processes when training, "
                             f"got {total} (shape {tuple(x.shape)} on process {rank(group)})")
        shape = [1, -1] + [1] * (x.dim() - 2)
        invstd = torch.rsqrt(m2 / total + eps)
        x_hat = (xs - mean.view(shape)) * invstd.view(shape)
        y = F._affine(x_hat, weight, bias, lambda p: p.view(shape))
        statistics_out.extend([mean, m2 / (total - 1), total])
        ctx.save_for_backward(x_hat, invstd, weight)
        ctx.group, ctx.total, ctx.has_bias, ctx.dims = group, total, bias is not None, dims
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x_hat, invstd, weight = ctx.saved_tensors
        shape = [1, -1] + [1] * (x_hat.dim() - 2)
        dys = dy.to(x_hat.dtype)
        g = dys * weight.to(x_hat.dtype).view(shape) if weight is not None else dys
        # The two per-channel sums of the BN gradient run over the whole (global) batch.
        sums = torch.stack([g.sum(ctx.dims), (g * x_hat).sum(ctx.dims)])
        if is_distributed(ctx.group):
            dist.all_reduce(sums, group=ctx.group)
        mean_g, mean_g_xhat = (sums / ctx.total).unbind(0)
        dx = invstd.view(shape) * (g - mean_g.view(shape) - x_hat * mean_g_xhat.view(shape))
        dweight = (dys * x_hat).sum(ctx.dims).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        dbias = dys.sum(ctx.dims).to(dy.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx.to(dy.dtype), dweight, dbias, None, None, None


def sync_batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                    weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, momentum: float = 0.1,
                    eps: float = 1e-5, process_group=None) -> torch.Tensor:
    """Batch normalization in training mode with the statistics of the batch formed by the slices
    of every process in ``process_group`` (the default group if ``None``; without an initialized
    group this is :func:`normlib.functional.batch_norm`). Running statistics are updated with
    the global mean and unbiased variance; the backward pass all-reduces its two per-channel sums.
    The gradients of ``weight`` and ``bias`` are this process's share (DistributedDataParallel sums
    or averages them across processes). Derived in ``chapters/02_batch_norm.ipynb``."""
    C.check_tensor(input, "input", min_dim=2)
    C.check_eps(eps)
    C.check_momentum(momentum)
    F._check_per_channel(input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    statistics: list = []
    y = _SyncBatchNormFunction.apply(input, weight, bias, eps, process_group, statistics)
    mean, unbiased_var, _ = statistics
    F._update_running(running_mean, mean, momentum)
    F._update_running(running_var, unbiased_var, momentum)
    return y


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(local_rank: int, fn: Callable, world: int, port: int, timeout: float, results: str, args: tuple) -> None:
    # A new group of its own, even when the parent runs under torchrun: forget torchrun's
    # settings (its agent store would otherwise be asked to host this group's rendezvous).
    for name in ("TORCHELASTIC_USE_AGENT_STORE", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(name, None)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=local_rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout))
    torch.set_num_threads(1)
    try:
        outcome = ("ok", fn(*args))
    except Exception as error:  # reported to the parent, which re-raises it
        outcome = ("error", f"{type(error).__name__}: {error}")
    torch.save(outcome, os.path.join(results, f"{local_rank}.pt"))
    dist.destroy_process_group()


def spawn(fn: Callable, world: int, *args, timeout: float = 60.0) -> list:
    """Run ``fn(*args)`` in ``world`` CPU processes joined by a ``gloo`` process group and return
    each process's result, rank 0 first. An exception in a process is raised here as a
    ``RuntimeError`` naming the rank; ``timeout`` (seconds) bounds every collective, so a
    mismatch between processes fails instead of hanging. ``fn`` must be importable (defined in
    a module, not a notebook). Used by the tests and ``chapters/02_batch_norm.ipynb``."""
    C.check_positive_int(world, "world")
    with tempfile.TemporaryDirectory() as results:
        torch.multiprocessing.start_processes(_spawned, args=(fn, world, _free_port(), timeout, results, args),
                                              nprocs=world, join=True, start_method="spawn")
        outcomes = [torch.load(os.path.join(results, f"{r}.pt"), weights_only=False) for r in range(world)]
    errors = [f"process {r}: {message}" for r, (status, message) in enumerate(outcomes) if status == "error"]
    if errors:
        raise RuntimeError("; ".join(errors))
    return [value for _, value in outcomes]


def batch_norm_on_slices(x: torch.Tensor, dy: torch.Tensor, sizes: list[int], repeats: int = 1) -> dict:
    """Run in each of ``len(sizes)`` processes (see :func:`spawn`): batch normalization (training
    mode, no affine) of this process's consecutive slice of ``x``, forward and backward with
    upstream gradient ``dy``, once with the statistics of the whole batch (``"synchronized"``,
    as :class:`normlib.nn.SyncBatchNorm`) and once with those of the slice (``"per_device"``, as
    a plain BatchNorm under DistributedDataParallel). Returns, for each, the slice's output,
    input gradient, and the median seconds of a forward and backward over ``repeats`` runs.
    Used in ``chapters/02_batch_norm.ipynb``."""
    start = sum(sizes[:rank()])
    x_slice, dy_slice = x[start:start + sizes[rank()]], dy[start:start + sizes[rank()]]
    methods = {"synchronized": lambda t: sync_batch_norm(t, None, None),
               "per_device": lambda t: F.batch_norm(t, None, None, training=True)}
    results = {}
    for name, method in methods.items():
        seconds = []
        for _ in range(repeats):
            t = x_slice.clone().requires_grad_()
            begin = time.perf_counter()
            y = method(t)
            y.backward(dy_slice)
            seconds.append(time.perf_counter() - begin)
        results[name] = {"y": y.detach(), "dx": t.grad, "seconds": sorted(seconds)[len(seconds) // 2]}
    return results
