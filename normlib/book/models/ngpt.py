"""nGPT, the normalized transformer (Loshchilov et al. 2024), beside :class:`~normlib.book.models.GPT`.

Every embedding and every weight matrix is kept at unit norm along the embedding dimension
(:meth:`NGPT.normalize_matrices`, called after each optimizer step), every hidden state lives
on the unit sphere, and each block moves the hidden state a learnable fraction of the way
towards its (normalized) suggestion: ``h <- Norm(h + alpha * (Norm(block(h)) - h))``.
Derived in ``chapters/16_ngpt.ipynb``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as TF
from torch import nn

from normlib.functional import l2_normalize
from normlib.book.models.gpt import CausalSelfAttention, check_token_ids, swiglu_width


class Scale(nn.Module):
    """A learnable vector whose value is ``param * (init / scale)``, with ``param`` starting at
    ``scale``. Adam moves ``param`` by about the learning rate per step whatever the gradient's
    size, so this choice sets the effective learning rate of the value to ``lr * init / scale``
    (the paper's ``s_init`` / ``s_scale`` trick)."""

    def __init__(self, size: int, init: float, scale: float):
        super().__init__()
        self.init, self.scale = init, scale
        self.param = nn.Parameter(torch.full((size,), float(scale)))

    def forward(self) -> torch.Tensor:
        return self.param * (self.init / self.scale)

    def extra_repr(self) -> str:
        return f"{self.param.numel()}, init={self.init:g}, scale={self.scale:g}"


class NormalizedAttention(CausalSelfAttention):
    """Attention whose queries and keys are unit vectors scaled by ``s_qk``, so their dot
    products are scaled cosine similarities; the softmax temperature is ``sqrt(d_head)``
    (instead of ``1 / sqrt(d_head)``) because cosines lie in [-1, 1]."""

    def __init__(self, width: int, heads: int):
        super().__init__(width, heads, rotary_positions=True)
        self.s_qk = Scale(width, init=1.0, scale=1 / math.sqrt(width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = self.queries_keys_values(h)
        s_qk = self.s_qk().view(self.heads, 1, -1)
        q, k = l2_normalize(q) * s_qk, l2_normalize(k) * s_qk
        y = TF.scaled_dot_product_attention(q, k, v, is_causal=True, scale=math.sqrt(q.shape[-1]))
        return self.merge_heads(y)


class NormalizedMLP(nn.Module):
    """SwiGLU ``out(u * silu(v))`` with ``u`` scaled by ``s_u`` and ``v`` by ``s_v * sqrt(width)``:
    the projections of a unit vector onto unit rows are of size ``1/sqrt(width)``, and the
    factor brings ``v`` back to where the SiLU is not linear."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.u = nn.Linear(width, hidden, bias=False)
        self.v = nn.Linear(width, hidden, bias=False)
        self.out = nn.Linear(hidden, width, bias=False)
        self.s_u, self.s_v = Scale(hidden, 1.0, 1.0), Scale(hidden, 1.0, 1.0)
        self.width = width

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        u = self.u(h) * self.s_u()
        v = self.v(h) * (self.s_v() * math.sqrt(self.width))
        return self.out(u * TF.silu(v))


class NormalizedBlock(nn.Module):
    """``h <- Norm(h + alpha_A (Norm(attention(h)) - h))``, then the same with the MLP: a step
    from ``h`` towards each sub-layer's suggestion on the sphere, with per-dimension learnable
    step sizes (the eigen learning rates ``alpha``). As in the authors' code, the step sizes are
    the absolute values of the learned vectors, so a step never points away from the suggestion."""

    def __init__(self, width: int, heads: int, hidden: int, alpha_init: float):
        super().__init__()
        self.attention = NormalizedAttention(width, heads)
        self.mlp = NormalizedMLP(width, hidden)
        self.alpha_attention = Scale(width, alpha_init, 1 / math.sqrt(width))
        self.alpha_mlp = Scale(width, alpha_init, 1 / math.sqrt(width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = l2_normalize(h + self.alpha_attention().abs() * (l2_normalize(self.attention(h)) - h))
        return l2_normalize(h + self.alpha_mlp().abs() * (l2_normalize(self.mlp(h)) - h))


class NGPT(nn.Module):
    """The normalized transformer: unit-norm token embeddings, ``depth`` normalized blocks with
    rotary positions, and logits ``s_z * (E_out h)``, i.e. scaled cosine similarities between
    the final hidden state and each output embedding. No normalization layers, no biases.

    ``hidden`` is the SwiGLU width (default about ``8 * width / 3``, which gives the MLP the
    parameter count of :class:`~normlib.book.models.GPT`'s ``4 * width`` GELU MLP).
    Call :meth:`normalize_matrices` after every optimizer step; train without weight decay.
    Derived in ``chapters/16_ngpt.ipynb``."""

    def __init__(self, vocab_size: int, context: int, width: int = 64, depth: int = 2, heads: int = 4,
                 hidden: int | None = None, alpha_init: float = 0.05):
        super().__init__()
        hidden = hidden or swiglu_width(width)
        self.context = context
        self.token = nn.Embedding(vocab_size, width)
        self.blocks = nn.ModuleList(NormalizedBlock(width, heads, hidden, alpha_init) for _ in range(depth))
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.s_z = Scale(vocab_size, 1.0, 1 / math.sqrt(width))
        for weight, _ in self.matrices_on_sphere():
            nn.init.normal_(weight, std=1 / math.sqrt(width))
        self.normalize_matrices()

    def matrices_on_sphere(self) -> Iterator[tuple[torch.Tensor, int]]:
        """Each matrix with the axis of its embedding dimension: rows of the embeddings and of
        the projections that read the hidden state, columns of those that write to it."""
        yield self.token.weight, 1
        yield self.head.weight, 1
        for block in self.blocks:
            yield block.attention.qkv.weight, 1
            yield block.attention.out.weight, 0
            yield block.mlp.u.weight, 1
            yield block.mlp.v.weight, 1
            yield block.mlp.out.weight, 0

    @torch.no_grad()
    def normalize_matrices(self) -> None:
        """Project every matrix back onto the unit sphere along its embedding dimension."""
        for weight, dim in self.matrices_on_sphere():
            weight.copy_(l2_normalize(weight, dim=dim))

    def eigen_learning_rates(self) -> torch.Tensor:
        """The step sizes ``|alpha|`` of every block, ``(depth, 2, width)``: attention, then MLP."""
        return torch.stack([torch.stack([b.alpha_attention(), b.alpha_mlp()]) for b in self.blocks]).abs().detach()

    def hidden_states(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """The hidden state after the embedding and after each block, ``(N, T, width)`` each."""
        check_token_ids(ids, self.context)
        states = [self.token(ids)]
        for block in self.blocks:
            states.append(block(states[-1]))
        return states

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden_states(ids)[-1]) * self.s_z()
