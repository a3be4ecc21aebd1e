"""A small pre-norm GPT (decoder-only transformer) whose normalization layer is a parameter,
in the spirit of nanoGPT's single readable file."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as TF
from torch import nn

from normlib.nn import LayerNorm


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"heads: expected a divisor of width={width}, got {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """``x + attention(norm(x))``, then ``x + mlp(norm(x))``: the pre-norm residual block."""

    def __init__(self, width: int, heads: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        self.norm_attention, self.norm_mlp = norm(width), norm(width)
        self.attention = CausalSelfAttention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width, bias=False), nn.GELU(),
                                 nn.Linear(4 * width, width, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm_attention(x))
        return x + self.mlp(self.norm_mlp(x))


class GPT(nn.Module):
    """Token and position embeddings, ``depth`` pre-norm blocks, a final norm and a linear
    read-out. ``norm(width)`` builds every normalization layer (LayerNorm by default).
    Used in ``chapters/04_rms_norm.ipynb``."""

    def __init__(self, vocab_size: int, context: int, width: int = 64, depth: int = 2, heads: int = 4,
                 norm: Callable[[int], nn.Module] = LayerNorm):
        super().__init__()
        self.context = context
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads, norm) for _ in range(depth))
        self.norm = norm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.context:
            raise ValueError(f"ids: expected at most {self.context} positions, got {ids.shape[1]}")
        x = self.token(ids) + self.position(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))
