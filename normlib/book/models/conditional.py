"""Two small conditional generators: a denoising diffusion model of a ring of Gaussians, one
per class, conditioned by concatenation, adaLN or adaLN-Zero (DiT's question), and a
label-map-to-image network whose normalization is InstanceNorm, BatchNorm or SPADE (SPADE's
question); with their data, training loss and sampler.

Derived in ``chapters/19_conditional_norms.ipynb``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as TF
from torch import nn

from normlib import functional as NF
from normlib import nn as normlib_nn

CONDITIONINGS = ("concat", "adaLN", "adaLN-Zero")


def ring_modes(classes: int = 8, radius: float = 2.0) -> torch.Tensor:
    """The ``(classes, 2)`` centres of a ring of Gaussians, one per class."""
    angles = torch.arange(classes) * 2 * math.pi / classes
    return torch.stack([angles.cos(), angles.sin()], 1) * radius


def ring_samples(n: int, generator: torch.Generator, classes: int = 8, sigma: float = 0.1):
    """``n`` points of the ring and their classes: a class drawn uniformly, then its Gaussian."""
    labels = torch.randint(0, classes, (n,), generator=generator)
    return ring_modes(classes)[labels] + sigma * torch.randn(n, 2, generator=generator), labels


class DDPM:
    """A denoising diffusion schedule (Ho et al. 2020): ``steps`` noise levels with a linear
    ``beta`` schedule; the network predicts the noise ``eps`` of ``x_t = sqrt(abar_t) x_0 +
    sqrt(1 - abar_t) eps``. The defaults are DDPM's 1,000-step schedule (``1e-4`` to ``0.02``)
    scaled to 100 steps, so that ``abar`` at the last step (5e-5) leaves almost nothing of
    ``x_0`` and sampling can start from pure noise."""

    def __init__(self, steps: int = 100, beta_start: float = 1e-3, beta_end: float = 0.2):
        self.steps = steps
        self.betas = torch.linspace(beta_start, beta_end, steps)
        self.alphas = 1 - self.betas
        self.alpha_bars = torch.cumprod(self.alphas, 0)

    def loss(self, model, x0: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The noise-prediction loss at a uniformly drawn level for each example."""
        t = torch.randint(0, self.steps, (len(x0),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        abar = self.alpha_bars[t].view(-1, *[1] * (x0.dim() - 1))
        return TF.mse_loss(model(abar.sqrt() * x0 + (1 - abar).sqrt() * noise, t, labels), noise)

    @torch.no_grad()
    def sample(self, model, labels: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator):
        """Ancestral sampling of one example per label, from pure noise to ``t = 0``."""
        x = torch.randn(len(labels), *shape, generator=generator)
        for t in reversed(range(self.steps)):
            noise = model(x, torch.full((len(labels),), t), labels)
            x = (x - self.betas[t] / (1 - self.alpha_bars[t]).sqrt() * noise) / self.alphas[t].sqrt()
            if t > 0:
                x = x + self.betas[t].sqrt() * torch.randn(x.shape, generator=generator)
        return x


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the noise level (half sines, half cosines)."""
    frequencies = torch.exp(-math.log(1000.0) * torch.arange(dim // 2) / (dim // 2))
    angles = t[:, None].float() * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], 1)


class ConditionedBlock(nn.Module):
    """A residual MLP block ``x + mlp(norm(x))`` conditioned on ``c`` (``(N, width)``) the
    DiT ways: ``"concat"`` ignores ``c`` (the condition entered with the input) and has an
    affine LayerNorm; ``"adaLN"`` modulates a LayerNorm without affine parameters by ``(shift,
    scale)`` from a linear map of ``SiLU(c)``; ``"adaLN-Zero"`` also gates the branch, the map
    (:class:`normlib.nn.AdaLNZero`) initialized at zero, so the block starts as the identity."""

    def __init__(self, width: int, conditioning: str):
        super().__init__()
        self.conditioning = conditioning
        self.norm = nn.LayerNorm(width, elementwise_affine=conditioning == "concat", eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        if conditioning == "adaLN":
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        elif conditioning == "adaLN-Zero":
            self.modulation = normlib_nn.AdaLNZero(width, width, chunks=3)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.conditioning == "concat":
            return x + self.mlp(self.norm(x))
        if self.conditioning == "adaLN":
            shift, scale = self.modulation(c).chunk(2, dim=-1)
            return x + self.mlp(NF.modulate(self.norm(x), shift, scale))
        shift, scale, gate = self.modulation(c)
        return x + gate * self.mlp(NF.modulate(self.norm(x), shift, scale))


class DiffusionMLP(nn.Module):
    """A noise predictor for 2-D points, conditioned on the noise level and a class as DiT is:
    ``c = mlp(timestep_embedding(t)) + embedding(y)``, then ``depth`` blocks
    (:class:`~normlib.book.models.conditional.ConditionedBlock`), a final LayerNorm (modulated
    by ``c`` except for ``"concat"``, whose input is ``[x, c]``) and a linear output, which
    adaLN-Zero initializes at zero as DiT does."""

    def __init__(self, conditioning: str = "adaLN-Zero", width: int = 64, depth: int = 4, classes: int = 8):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning: expected one of {CONDITIONINGS}, got {conditioning!r}")
        self.conditioning, self.width = conditioning, width
        self.label_embedding = nn.Embedding(classes, width)
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.input = nn.Linear(2 + (width if conditioning == "concat" else 0), width)
        self.blocks = nn.ModuleList(ConditionedBlock(width, conditioning) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=conditioning == "concat", eps=1e-6)
        if conditioning == "adaLN":
            self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        elif conditioning == "adaLN-Zero":
            self.final_modulation = normlib_nn.AdaLNZero(width, width, chunks=2)
        self.output = nn.Linear(width, 2)
        if conditioning == "adaLN-Zero":
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        c = self.time_mlp(timestep_embedding(t, self.width)) + self.label_embedding(labels)
        h = self.input(torch.cat([x, c], 1) if self.conditioning == "concat" else x)
        for block in self.blocks:
            h = block(h, c)
        h = self.final_norm(h)
        if self.conditioning == "adaLN":
            h = NF.modulate(h, *self.final_modulation(c).chunk(2, dim=-1))
        elif self.conditioning == "adaLN-Zero":
            h = NF.modulate(h, *self.final_modulation(c))
        return self.output(h)


def voronoi_label_maps(n: int, generator: torch.Generator, classes: int = 4, size: int = 16,
                       uniform_fraction: float = 0.25, sites: int = 4) -> torch.Tensor:
    """``(n, size, size)`` integer label maps: a ``uniform_fraction`` of them one class
    throughout, the others the Voronoi cells of ``sites`` random points with random classes."""
    uniform = torch.rand(n, generator=generator) < uniform_fraction
    points = torch.rand(n, sites, 2, generator=generator) * size
    labels = torch.randint(0, classes, (n, sites), generator=generator)
    grid = torch.arange(size) + 0.5
    distance = (grid.view(1, 1, size, 1) - points[..., 0, None, None]).square() \
        + (grid.view(1, 1, 1, size) - points[..., 1, None, None]).square()  # (n, sites, size, size)
    maps = labels.gather(1, distance.flatten(2).argmin(1)).view(n, size, size)
    return torch.where(uniform.view(n, 1, 1), labels[:, :1, None].expand(n, size, size), maps)


def one_hot_maps(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """``(N, H, W)`` integer maps as ``(N, classes, H, W)`` one-hot float maps."""
    return TF.one_hot(labels, classes).permute(0, 3, 1, 2).float()


def uniform_label_maps(classes: int, size: int) -> torch.Tensor:
    """The ``classes`` one-hot maps of one class each, ``(classes, classes, size, size)``:
    map ``k`` is class ``k`` everywhere."""
    return one_hot_maps(torch.arange(classes).view(-1, 1, 1).expand(-1, size, size), classes)


NORMS = ("instance", "batch", "spade", "spade-instance")


class LabelToImage(nn.Module):
    """A label-map-to-image network in pix2pixHD's style: the one-hot map enters as the input
    of ``depth`` 3x3 convolutions with reflection padding, each followed by a normalization
    without affine parameters and a ReLU, and a last convolution to one channel. ``norm`` is
    ``"instance"`` (pix2pixHD's), ``"batch"``, or SPADE in place of every normalization, its
    ``gamma`` and ``beta`` from the map: ``"spade"`` with batch statistics (the paper's),
    ``"spade-instance"`` with per-image ones."""

    def __init__(self, norm: str = "spade", classes: int = 4, width: int = 16, depth: int = 3, hidden: int = 16):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
        self.spade = norm.startswith("spade")
        widths = [classes] + [width] * depth
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, padding_mode="reflect")
                                   for a, b in zip(widths, widths[1:]))

        def make_norm():
            if self.spade:
                statistics = "instance" if norm == "spade-instance" else "batch"
                return normlib_nn.SPADE(width, classes, hidden=hidden, norm=statistics)
            if norm == "batch":
                return normlib_nn.BatchNorm2d(width, affine=False)
            return normlib_nn.InstanceNorm2d(width)

        self.norms = nn.ModuleList(make_norm() for _ in range(depth))
        self.output = nn.Conv2d(width, 1, 3, padding=1, padding_mode="reflect")

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """``(N, 1, H, W)`` images for ``(N, classes, H, W)`` one-hot maps."""
        h = maps
        for conv, norm in zip(self.convs, self.norms):
            h = conv(h)
            h = TF.relu(norm(h, maps) if self.spade else norm(h))
        return self.output(h)
