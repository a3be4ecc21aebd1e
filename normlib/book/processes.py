"""Process helpers for the book: joining the process group that ``torchrun`` describes (used by
the one training loop), small collectives, and :func:`spawn`, which runs a function in several
CPU processes for the tests and the batch-norm chapter. The SyncBatchNorm maths is library code,
in :mod:`normlib.distributed`."""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from normlib import _validation as V
from normlib import functional as NF
from normlib.distributed import is_distributed, rank, sync_batch_norm, world_size

__all__ = ["init_from_environment", "is_distributed", "rank", "world_size", "all_reduce_mean",
           "broadcast_from_rank_0", "spawn", "batch_norm_on_slices"]


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(local_rank: int, fn: Callable, processes: int, port: int, timeout: float, results: str, args: tuple) -> None:
    # A new group of its own, even when the parent runs under torchrun: forget torchrun's
    # settings (its agent store would otherwise be asked to host this group's rendezvous).
    for name in ("TORCHELASTIC_USE_AGENT_STORE", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(name, None)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=local_rank, world_size=processes,
                            timeout=datetime.timedelta(seconds=timeout))
    torch.set_num_threads(1)
    try:
        outcome = ("ok", fn(*args))
    except Exception as error:  # reported to the parent, which re-raises it
        outcome = ("error", f"{type(error).__name__}: {error}")
    torch.save(outcome, os.path.join(results, f"{local_rank}.pt"))
    dist.destroy_process_group()


def spawn(fn: Callable, processes: int, *args, timeout: float = 60.0) -> list:
    """Run ``fn(*args)`` in ``processes`` CPU processes joined by a ``gloo`` process group and return
    each process's result, rank 0 first. An exception in a process is raised here as a
    ``RuntimeError`` naming the rank; ``timeout`` (seconds) bounds every collective, so a
    mismatch between processes fails instead of hanging. ``fn`` must be importable (defined in
    a module, not a notebook). Used by the tests and ``chapters/02_batch_norm.ipynb``."""
    V.check_positive_int(processes, "processes")
    with tempfile.TemporaryDirectory() as results:
        torch.multiprocessing.start_processes(_spawned, args=(fn, processes, _free_port(), timeout, results, args),
                                              nprocs=processes, join=True, start_method="spawn")
        outcomes = [torch.load(os.path.join(results, f"{r}.pt"), weights_only=False) for r in range(processes)]
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
               "per_device": lambda t: NF.batch_norm(t, None, None, training=True)}
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
