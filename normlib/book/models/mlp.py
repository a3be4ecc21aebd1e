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


class MultitaskMLP(nn.Module):
    """A shared trunk of ``depth`` fully connected ReLU layers of width ``hidden`` and one
    linear head per task: GradNorm's toy network (Chen et al. 2018: four layers of 100 units).
    ``forward`` returns ``(N, tasks, outputs)``; :meth:`task_losses` the mean squared error of
    each task, shape ``(tasks,)``; :attr:`shared` the last shared layer's weight, where GradNorm
    measures each task's pull. Used in ``chapters/12_gradnorm.ipynb``."""

    def __init__(self, inputs: int, outputs: int, tasks: int, hidden: int = 100, depth: int = 4):
        super().__init__()
        for value, name in ((inputs, "inputs"), (outputs, "outputs"), (tasks, "tasks"), (hidden, "hidden"),
                            (depth, "depth")):
            V.check_positive_int(value, name)
        sizes = [inputs] + [hidden] * depth
        self.trunk = nn.Sequential(*(layer for a, b in zip(sizes, sizes[1:]) for layer in (nn.Linear(a, b), nn.ReLU())))
        self.heads = nn.ModuleList(nn.Linear(hidden, outputs) for _ in range(tasks))

    @property
    def shared(self) -> nn.Parameter:
        return self.trunk[-2].weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        return torch.stack([head(h) for head in self.heads], dim=1)

    def task_losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each task's mean squared error against targets ``y`` of shape ``(N, tasks, outputs)``."""
        return ((self(x) - y) ** 2).mean(dim=(0, 2))
