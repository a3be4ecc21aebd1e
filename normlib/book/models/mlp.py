"""A fully connected network with an optional normalization before each nonlinearity."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

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
