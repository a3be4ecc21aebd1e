"""A fully connected network with an optional normalization before each nonlinearity."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from normlib import _validation as V

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}


class MLP(nn.Module):
    """``sizes[0] -> sizes[1] -> ... -> sizes[-1]`` with ``activation`` after each hidden
    layer and, if ``norm`` is given, ``norm(width)`` between each hidden linear layer and its
    nonlinearity (where Ioffe & Szegedy put BatchNorm). With a norm that re-centers, the hidden
    linear layers have no bias: the norm's shift ``beta`` takes its place.

    ``init_std`` draws the weights from N(0, init_std^2) (the "small Gaussian" init of the
    BatchNorm paper); ``None`` keeps PyTorch's default. Inputs are flattened.
    """

    def __init__(self, sizes, activation: str = "relu", norm: Callable[[int], nn.Module] | None = None,
                 init_std: float | None = None):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"sizes: expected at least an input and an output size, got {sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = ACTIVATIONS[activation]
        hidden = list(zip(sizes[:-2], sizes[1:-1]))
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=norm is None) for a, b in hidden)
        self.norms = nn.ModuleList(norm(b) for _, b in hidden) if norm is not None else None
        self.head = nn.Linear(sizes[-2], sizes[-1])
        if init_std is not None:
            for layer in [*self.linears, self.head]:
                nn.init.normal_(layer.weight, std=init_std)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, return_preactivations: bool = False):
        """Logits; with ``return_preactivations`` also the inputs of each hidden nonlinearity."""
        h = x.flatten(1)
        preactivations = []
        for i, linear in enumerate(self.linears):
            z = linear(h)
            if self.norms is not None:
                z = self.norms[i](z)
            preactivations.append(z)
            h = self.activation(z)
        logits = self.head(h)
        return (logits, preactivations) if return_preactivations else logits


class ShiftingNoise(nn.Module):
    """The perturbation of Santurkar et al.'s "noisy BatchNorm", placed after a norm: in
    training, every forward pass rescales and shifts each feature (dimension 1),
    ``y = scale * x + shift``, with ``scale ~ U(scale_range)`` and ``shift ~ U(-max_shift,
    max_shift)`` drawn anew per feature, from torch's global generator. The distribution
    the next layer receives then moves at every step by construction, whatever the norm
    before it does. Santurkar et al. also drew the noise per example; this moves the whole
    distribution, the quantity internal covariate shift is about. Identity in eval mode.
    Used in ``chapters/02_batch_norm.ipynb``."""

    def __init__(self, max_shift: float = 1.0, scale_range: tuple[float, float] = (0.5, 2.0)):
        super().__init__()
        V.check_number(max_shift, "max_shift", 0)
        if not isinstance(scale_range, (tuple, list)) or len(scale_range) != 2:
            raise ValueError(f"scale_range: expected (low, high), got {scale_range!r}")
        low, high = scale_range
        V.check_number(low, "scale_range[0]", 0, open_low=True)
        V.check_number(high, "scale_range[1]", low)
        self.max_shift, self.scale_range = float(max_shift), (float(low), float(high))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        V.check_tensor(x, "input", min_dim=2)
        shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        low, high = self.scale_range
        scale = torch.empty(shape, dtype=x.dtype, device=x.device).uniform_(low, high)
        shift = torch.empty(shape, dtype=x.dtype, device=x.device).uniform_(-self.max_shift, self.max_shift)
        return scale * x + shift

    def extra_repr(self) -> str:
        return f"max_shift={self.max_shift}, scale_range={self.scale_range}"
