"""The one training loop of the book.

``fit`` trains a model for a number of optimizer steps on mini-batches drawn from tensors,
evaluates it every ``eval_every`` steps, shows a progress bar, and returns a
:class:`History`. A run whose loss becomes non-finite stops early and is marked
``diverged``, which is what learning-rate sweeps need to know.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from normlib import _validation as V
from normlib.book import processes

__all__ = ["seed_everything", "minibatches", "History", "fit", "warmup_cosine", "weight_decay_groups", "accuracy",
           "next_token_loss", "learning_rate_sensitivity"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def minibatches(tensors: Sequence[torch.Tensor], batch_size: int, generator: torch.Generator,
                rank: int = 0, world_size: int = 1) -> Iterator[tuple]:
    """Endless shuffled mini-batches (each epoch a new permutation, incomplete batches dropped).

    With ``world_size`` processes, each mini-batch of ``batch_size`` examples is split between them
    the way ``torch.utils.data.DistributedSampler`` splits a dataset (process ``rank`` takes every
    ``world_size``-th example, starting at ``rank``), so the processes together see exactly the batches
    of a single-process run with the same generator."""
    n = len(tensors[0])
    if any(len(t) != n for t in tensors):
        raise ValueError(f"tensors: expected the same length, got {[len(t) for t in tensors]}")
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size: expected an int in [1, {n}], got {batch_size}")
    if batch_size % world_size:
        raise ValueError(f"batch_size: expected a multiple of the number of processes ({world_size}), got {batch_size}")
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            index = order[start:start + batch_size][rank::world_size]
            yield tuple(t[index] for t in tensors)


@dataclass
class History:
    """Metrics recorded during training: ``history["loss"]`` is a list of (step, value)."""

    records: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    diverged: bool = False
    seconds: float = 0.0
    steps: int = 0

    def log(self, step: int, **metrics: float) -> None:
        for key, value in metrics.items():
            self.records.setdefault(key, []).append((step, float(value)))

    def __getitem__(self, key: str) -> list[tuple[int, float]]:
        return self.records[key]

    def steps_of(self, key: str) -> np.ndarray:
        return np.array([s for s, _ in self.records[key]])

    def values(self, key: str) -> np.ndarray:
        return np.array([v for _, v in self.records[key]])

    def last(self, key: str) -> float:
        return self.records[key][-1][1]

    def running_mean(self, key: str, window: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, means)``: the mean of ``key`` over each ``window`` consecutive records, at
        the step of the window's last record (a noisy training loss, smoothed for a plot)."""
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"window: expected a positive int, got {window!r}")
        values = self.values(key)
        if len(values) < window:
            return self.steps_of(key)[:0], values[:0]
        means = np.convolve(values, np.ones(window) / window, mode="valid")
        return self.steps_of(key)[window - 1:], means

    def first_step_at_most(self, key: str, threshold: float) -> int | None:
        """The first recorded step at which ``key`` is at most ``threshold`` (``None`` if never):
        how many steps a run needs to reach a target loss, at the resolution of its records."""
        return next((step for step, value in self.records[key] if value <= threshold), None)

    def mean_from(self, key: str, step: int) -> float:
        """The mean of ``key`` over its records at ``step`` and later. For a run that oscillates
        (a GAN), the quality over its late checkpoints says more than the one it stopped at."""
        late = [value for s, value in self.records[key] if s >= step]
        if not late:
            raise ValueError(f"step: expected at most the last recorded step of {key!r}, "
                             f"{self.records[key][-1][0]}, got {step}")
        return float(np.mean(late))


def fit(
    model: nn.Module,
    data: Sequence[torch.Tensor],
    *,
    loss_fn: Callable[[nn.Module, tuple], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    steps: int,
    batch_size: int,
    generator: torch.Generator,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    eval_every: int = 0,
    before_step: Callable[[nn.Module, int], None] | None = None,
    after_step: Callable[[nn.Module, int], None] | None = None,
    scheduler=None,
    progress: bool | str = True,
    log_every: int = 1,
    sync_batch_norm: bool = True,
) -> History:
    """Train ``model`` for ``steps`` optimizer steps.

    ``loss_fn(model, batch)`` returns the scalar loss of a mini-batch. ``evaluate(model)``
    (called in eval mode under ``torch.no_grad``, at step 0, every ``eval_every`` steps and
    at the end) returns metrics to record; each evaluation also records ``seconds``, the
    training time so far (evaluations excluded). ``before_step(model, step)`` runs between the
    backward pass and the optimizer step (gradient clipping goes there), ``after_step(model,
    step)`` after the optimizer step (nGPT re-normalizes its weights there).

    Under ``torchrun --nproc_per_node K`` the same call trains data-parallel: the model is
    wrapped in ``DistributedDataParallel``, each process takes ``batch_size / K`` examples of
    every mini-batch, its BatchNorm layers become :class:`normlib.nn.SyncBatchNorm` (unless
    ``sync_batch_norm=False``, which keeps per-process statistics), the logged loss is averaged
    over processes, evaluation runs on rank 0 and is shared, and only rank 0 shows progress.
    Every process returns the same history.
    """
    if processes.init_from_environment():
        with _synchronized_batch_norm(model, sync_batch_norm):
            return _fit(torch.nn.parallel.DistributedDataParallel(model), model, data, loss_fn, optimizer, steps,
                        batch_size, generator, evaluate, eval_every, before_step, after_step, scheduler, progress,
                        log_every)
    return _fit(model, model, data, loss_fn, optimizer, steps, batch_size, generator, evaluate, eval_every,
                before_step, after_step, scheduler, progress, log_every)


@contextlib.contextmanager
def _synchronized_batch_norm(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Swap the BatchNorm layers of ``module`` for SyncBatchNorm layers sharing their parameters
    and buffers, and put the originals back afterwards (the caller's model keeps its classes)."""
    from normlib.nn import SyncBatchNorm

    swapped = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
               if SyncBatchNorm.is_synchronizable(child)] if enabled else []
    for parent, name, child in swapped:
        parent.add_module(name, SyncBatchNorm.convert_sync_batchnorm(child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            parent.add_module(name, child)


def _fit(model, module, data, loss_fn, optimizer, steps, batch_size, generator, evaluate, eval_every, before_step,
         after_step, scheduler, progress, log_every) -> History:
    """:func:`fit` proper: ``model`` is what the loss is computed with (the DDP wrapper in a
    distributed run), ``module`` the user's model."""
    from tqdm import tqdm  # a text bar: no widget dependency, works in a terminal and in Jupyter

    rank, world_size = processes.rank(), processes.world_size()
    history = History()
    evaluation_seconds = 0.0

    def run_evaluation(step: int) -> None:
        nonlocal evaluation_seconds
        if evaluate is None:
            return
        begin = time.perf_counter()
        was_training = module.training
        module.eval()
        with torch.no_grad():
            metrics = processes.broadcast_from_rank_0(evaluate(module) if rank == 0 else None)
        module.train(was_training)
        training_seconds = begin - start - evaluation_seconds if step else 0.0
        history.log(step, seconds=training_seconds, **metrics)
        evaluation_seconds += time.perf_counter() - begin

    run_evaluation(0)  # step 0 records 0 seconds; the clock starts below
    model.train()
    batches = minibatches(data, batch_size, generator, rank, world_size)
    bar = tqdm(range(1, steps + 1), desc=progress if isinstance(progress, str) else None,
               disable=not progress or rank != 0, leave=False, mininterval=1.0)
    start, evaluation_seconds = time.perf_counter(), 0.0
    for step in bar:
        loss = loss_fn(model, next(batches))
        loss_value = processes.all_reduce_mean(loss.item())  # every process stops together
        if not math.isfinite(loss_value):
            history.diverged = True
            history.log(step, loss=float("inf"))
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if before_step is not None:
            before_step(module, step)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step(module, step)
        if step % log_every == 0:
            history.log(step, loss=loss_value)
        if eval_every and step % eval_every == 0 and step != steps:
            run_evaluation(step)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
    history.steps = step
    history.seconds = time.perf_counter() - start - evaluation_seconds
    if not history.diverged:
        run_evaluation(steps)
    return history


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 0,
                  final_fraction: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate rising linearly over ``warmup`` steps, then following a half cosine from
    the optimizer's learning rate down to ``final_fraction`` of it at step ``steps``.
    Pass it to :func:`fit` as ``scheduler``."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    if not isinstance(warmup, int) or not 0 <= warmup < steps:
        raise ValueError(f"warmup: expected an int in [0, {steps - 1}], got {warmup!r}")
    V.check_number(final_fraction, "final_fraction", 0, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups that decay the matrices and embeddings (parameters with two or
    more dimensions) and not the gains and biases of norms (one dimension), the usual recipe of
    GPT-style training (nanoGPT, LLaMA) and of nGPT's baseline. Used in
    ``chapters/16_ngpt.ipynb``."""
    V.check_number(weight_decay, "weight_decay", low=0.0)
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of examples whose arg-max prediction equals the label."""
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size])
        correct += (logits.argmax(-1) == y[start:start + batch_size]).sum().item()
    return correct / len(x)


def next_token_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of a language model's ``(N, T, vocab)`` logits against ``(N, T)`` targets."""
    inputs, targets = batch
    return torch.nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())


def learning_rate_sensitivity(final_losses: Sequence[float], initial_loss: float) -> float:
    """Wortsman et al.'s (2024) learning-rate sensitivity of a sweep over log-spaced learning
    rates: the mean over the runs of ``min(loss, initial_loss) - best``, where ``best`` is the
    lowest final loss of the sweep. A run that diverged (a non-finite loss) or ended above the
    loss at initialization counts as the loss at initialization. Zero when every learning rate
    does equally well. Used in ``chapters/14_attention_norms.ipynb``."""
    V.check_number(initial_loss, "initial_loss")
    losses = np.asarray(final_losses, dtype=float)
    if losses.ndim != 1 or losses.size == 0:
        raise ValueError(f"final_losses: expected a non-empty sequence of numbers, got shape {losses.shape}")
    capped = np.where(np.isfinite(losses), np.minimum(losses, initial_loss), initial_loss)
    return float(np.mean(capped - capped.min()))
