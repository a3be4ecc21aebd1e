"""Small GANs for the spectral-normalization chapter: data, models, the alternating objective,
and sample-quality metrics.

Training goes through the book's one loop, :func:`normlib.book.train.fit`: ``fit`` steps the
*generator*, and :class:`AlternatingObjective`, used as its ``loss_fn``, first performs the
discriminator's ``n_dis`` updates on the ``n_dis`` slices of the mini-batch (each with its own
optimizer, as in Miyato et al.'s algorithm) and then returns the generator's loss.

Derived in ``chapters/08_spectral_norm.ipynb``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as TF
from torch import nn

from normlib import _validation as V
from normlib.spectral import spectral_norm, weight_norm

__all__ = ["OptimizerSetting", "TABLE_1_SETTINGS", "CONSTRAINTS", "ring_centers", "ring_of_gaussians",
           "mlp_generator", "mlp_discriminator", "GAN", "gradient_penalty", "AlternatingObjective", "objective_for",
           "nearest_mode", "modes_covered",
           "sliced_wasserstein", "layer_singular_values"]


@dataclass(frozen=True)
class OptimizerSetting:
    """Adam's learning rate and betas, and ``n_dis`` discriminator updates per generator update.
    Used in ``chapters/08_spectral_norm.ipynb``."""

    lr: float
    beta1: float
    beta2: float
    n_dis: int

    def adam(self, parameters) -> torch.optim.Adam:
        return torch.optim.Adam(parameters, lr=self.lr, betas=(self.beta1, self.beta2))


# Miyato et al. (2018), table 1: A-C are conservative, D-F aggressive (large lr, or beta1 = 0.9).
TABLE_1_SETTINGS = {
    "A": OptimizerSetting(1e-4, 0.5, 0.9, 5),
    "B": OptimizerSetting(1e-4, 0.5, 0.999, 1),
    "C": OptimizerSetting(2e-4, 0.5, 0.999, 1),
    "D": OptimizerSetting(1e-3, 0.5, 0.9, 5),
    "E": OptimizerSetting(1e-3, 0.5, 0.999, 5),
    "F": OptimizerSetting(1e-3, 0.9, 0.999, 5),
}

# How a discriminator is constrained. "clip" is WGAN's weight clipping (Arjovsky et al. 2017) and
# "gradient_penalty" WGAN-GP's penalty on the input gradient (Gulrajani et al. 2017); both come
# with WGAN's loss, as in Miyato et al.'s comparison. The others use the non-saturating loss.
CONSTRAINTS = ("none", "clip", "gradient_penalty", "weight_norm", "spectral_norm")


def ring_centers(modes: int = 8, radius: float = 2.0) -> torch.Tensor:
    """``(modes, 2)`` points evenly spaced on a circle. Used in ``chapters/08_spectral_norm.ipynb``."""
    V.check_positive_int(modes, "modes")
    angles = 2 * math.pi * torch.arange(modes) / modes
    return radius * torch.stack([angles.cos(), angles.sin()], dim=1)


def ring_of_gaussians(n: int, rng: torch.Generator, modes: int = 8, radius: float = 2.0,
                      std: float = 0.05) -> torch.Tensor:
    """``n`` samples of an equal mixture of isotropic Gaussians (standard deviation ``std``)
    centred on :func:`ring_centers`: the classic test of mode collapse.
    Used in ``chapters/08_spectral_norm.ipynb``."""
    V.check_positive_int(n, "n")
    if not std > 0:
        raise ValueError(f"std: expected a positive number, got {std!r}")
    which = torch.randint(modes, (n,), generator=rng)
    return ring_centers(modes, radius)[which] + std * torch.randn(n, 2, generator=rng)


def _mlp(sizes: list[int], wrap=lambda layer: layer) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(wrap(nn.Linear(a, b)))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


def mlp_generator(latent: int, hidden: int, out_features: int, depth: int = 3) -> nn.Sequential:
    """``depth`` linear layers with leaky-ReLU between them and a linear output (no normalization).
    Used in ``chapters/08_spectral_norm.ipynb``."""
    for value, name in ((latent, "latent"), (hidden, "hidden"), (out_features, "out_features"), (depth, "depth")):
        V.check_positive_int(value, name)
    return _mlp([latent] + [hidden] * (depth - 1) + [out_features])


def mlp_discriminator(in_features: int, hidden: int, constraint: str = "none", depth: int = 3) -> nn.Sequential:
    """``depth`` linear layers to one logit, each re-parametrized by ``constraint``:
    ``"spectral_norm"`` or ``"weight_norm"`` (from :mod:`normlib.spectral`); ``"none"``,
    ``"clip"`` and ``"gradient_penalty"`` leave the layers plain (clipping and the penalty act
    in :class:`AlternatingObjective`). Used in ``chapters/08_spectral_norm.ipynb``."""
    if constraint not in CONSTRAINTS:
        raise ValueError(f"constraint: expected one of {CONSTRAINTS}, got {constraint!r}")
    for value, name in ((in_features, "in_features"), (hidden, "hidden"), (depth, "depth")):
        V.check_positive_int(value, name)
    wrap = {"spectral_norm": spectral_norm, "weight_norm": weight_norm}.get(constraint, lambda layer: layer)
    return _mlp([in_features] + [hidden] * (depth - 1) + [1], wrap)


class GAN(nn.Module):
    """A generator and a discriminator; ``gan(z)`` is the generator's output.
    Used in ``chapters/08_spectral_norm.ipynb``."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, latent: int):
        super().__init__()
        V.check_positive_int(latent, "latent")
        self.generator, self.discriminator, self.latent = generator, discriminator, latent

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def sample(self, n: int, rng: torch.Generator | None = None) -> torch.Tensor:
        device = next(self.generator.parameters()).device
        return self.generator(torch.randn(n, self.latent, generator=rng).to(device))


def gradient_penalty(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     rng: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP's penalty (Gulrajani et al. 2017): the mean of ``(||grad_x D(x)|| - 1)^2`` at
    points ``x = e real + (1 - e) fake`` drawn uniformly on the segments between paired real and
    generated examples (``e ~ U(0, 1)`` per pair). Differentiable with respect to the
    discriminator's parameters (it needs a second-order backward).
    Used in ``chapters/08_spectral_norm.ipynb``."""
    V.check_tensor(real, "real", min_dim=2)
    if fake.shape != real.shape:
        raise ValueError(f"fake: expected the shape of real {tuple(real.shape)}, got {tuple(fake.shape)}")
    e = torch.rand(len(real), *[1] * (real.dim() - 1), generator=rng).to(real)
    points = (e * real + (1 - e) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(points).sum(), points, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


class AlternatingObjective:
    """The ``loss_fn`` that :func:`normlib.book.train.fit` needs to train a :class:`GAN`.

    ``fit`` must be given the generator's optimizer and mini-batches of ``n_dis * batch`` real
    examples. Each call splits the mini-batch into ``n_dis`` slices and updates the
    discriminator once per slice with ``discriminator_optimizer`` (real and generated examples in
    one forward pass, so a spectrally normalized layer runs one power iteration per update),
    then returns the generator's loss on ``batch`` fresh samples.

    ``loss`` is ``"standard"`` (the non-saturating loss of Goodfellow et al.: the discriminator
    minimizes ``softplus(-D(x)) + softplus(D(G(z)))``, the generator ``softplus(-D(G(z)))``) or
    ``"wasserstein"`` (WGAN: ``D(G(z)) - D(x)`` and ``-D(G(z))``). ``clip`` clamps every
    discriminator parameter to ``[-clip, clip]`` after each update (WGAN's weight clipping);
    ``penalty`` adds ``penalty`` times :func:`gradient_penalty` to the discriminator's loss
    (WGAN-GP, whose authors use 10). ``discriminator_loss`` holds the last discriminator loss.
    Used in ``chapters/08_spectral_norm.ipynb``.
    """

    def __init__(self, discriminator_optimizer: torch.optim.Optimizer, n_dis: int, rng: torch.Generator,
                 loss: str = "standard", clip: float | None = None, penalty: float | None = None):
        V.check_positive_int(n_dis, "n_dis")
        if loss not in ("standard", "wasserstein"):
            raise ValueError(f"loss: expected 'standard' or 'wasserstein', got {loss!r}")
        if clip is not None and not clip > 0:
            raise ValueError(f"clip: expected None or a positive number, got {clip!r}")
        if penalty is not None and not penalty > 0:
            raise ValueError(f"penalty: expected None or a positive number, got {penalty!r}")
        self.optimizer, self.n_dis, self.rng, self.loss, self.clip, self.penalty = (
            discriminator_optimizer, n_dis, rng, loss, clip, penalty)
        self.discriminator_loss = float("nan")

    def _discriminator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        if self.loss == "wasserstein":
            return fake_logits.mean() - real_logits.mean()
        return TF.softplus(-real_logits).mean() + TF.softplus(fake_logits).mean()

    def _generator_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -fake_logits.mean() if self.loss == "wasserstein" else TF.softplus(-fake_logits).mean()

    def __call__(self, gan: GAN, batch: tuple[torch.Tensor]) -> torch.Tensor:
        (real,) = batch
        if len(real) % self.n_dis:
            raise ValueError(f"batch: expected a multiple of n_dis = {self.n_dis} examples, got {len(real)}")
        for real_slice in real.chunk(self.n_dis):
            with torch.no_grad():
                fake = gan.sample(len(real_slice), self.rng)
            logits = gan.discriminator(torch.cat([real_slice, fake]))
            loss = self._discriminator_loss(*logits.split(len(real_slice)))
            if self.penalty is not None:
                loss = loss + self.penalty * gradient_penalty(gan.discriminator, real_slice, fake, self.rng)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.clip is not None:
                with torch.no_grad():
                    for p in gan.discriminator.parameters():
                        p.clamp_(-self.clip, self.clip)
        self.discriminator_loss = loss.item()
        return self._generator_loss(gan.discriminator(gan.sample(len(real) // self.n_dis, self.rng)))


def objective_for(constraint: str, discriminator_optimizer: torch.optim.Optimizer, n_dis: int,
                  rng: torch.Generator) -> AlternatingObjective:
    """The :class:`AlternatingObjective` a discriminator with ``constraint`` is trained with in
    Miyato et al.'s comparison: WGAN's loss with clip value 0.01 for ``"clip"`` (Arjovsky et al.)
    and with penalty weight 10 for ``"gradient_penalty"`` (Gulrajani et al.), the non-saturating
    loss for the others. Used in ``chapters/08_spectral_norm.ipynb``."""
    if constraint not in CONSTRAINTS:
        raise ValueError(f"constraint: expected one of {CONSTRAINTS}, got {constraint!r}")
    wasserstein = constraint in ("clip", "gradient_penalty")
    return AlternatingObjective(discriminator_optimizer, n_dis, rng, loss="wasserstein" if wasserstein else "standard",
                                clip=0.01 if constraint == "clip" else None,
                                penalty=10.0 if constraint == "gradient_penalty" else None)


def nearest_mode(samples: torch.Tensor, centers: torch.Tensor, max_distance: float) -> torch.Tensor:
    """Index of the nearest center for each sample, or -1 where it is farther than ``max_distance``.
    Used in ``chapters/08_spectral_norm.ipynb``."""
    V.check_tensor(samples, "samples", min_dim=2, max_dim=2)
    V.check_tensor(centers, "centers", min_dim=2, max_dim=2)
    distance, index = torch.cdist(samples.float(), centers.float()).min(dim=1)
    return torch.where(distance <= max_distance, index, torch.full_like(index, -1))


def modes_covered(assignments: torch.Tensor, modes: int, min_share: float = 0.25) -> int:
    """How many modes receive at least ``min_share`` of their fair share (``n / modes``) of the
    samples; ``assignments`` holds a mode index per sample, -1 for a sample of no mode.
    Used in ``chapters/08_spectral_norm.ipynb``."""
    V.check_positive_int(modes, "modes")
    V.check_number(min_share, "min_share", 0, 1, open_low=True)
    kept = assignments[assignments >= 0]
    counts = torch.bincount(kept, minlength=modes)
    return int((counts >= min_share * len(assignments) / modes).sum())


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256,
                       rng: torch.Generator | None = None) -> float:
    """Sliced 1-Wasserstein distance between two equal-size samples ``(n, d)``: the average over
    random unit directions of the 1-D Wasserstein distance between the projected samples (sorted
    projections, compared in order). Zero for identical distributions, and it grows both when
    samples miss part of the data and when they fall where there is none.
    Used in ``chapters/08_spectral_norm.ipynb``."""
    V.check_tensor(a, "a", min_dim=2, max_dim=2)
    V.check_tensor(b, "b", min_dim=2, max_dim=2)
    if a.shape != b.shape:
        raise ValueError(f"b: expected the shape of a {tuple(a.shape)}, got {tuple(b.shape)}")
    directions = TF.normalize(torch.randn(a.shape[1], projections, generator=rng), dim=0)
    pa = (a.float().cpu() @ directions).sort(dim=0).values
    pb = (b.float().cpu() @ directions).sort(dim=0).values
    return (pa - pb).abs().mean().item()


def layer_singular_values(module: nn.Module) -> list[torch.Tensor]:
    """Singular values (descending) of the weight each linear or convolutional layer of
    ``module`` actually applies (after any parametrization), flattened to ``(out, in * k)``.
    Used in ``chapters/08_spectral_norm.ipynb``."""
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    with torch.no_grad():
        return [torch.linalg.svdvals(m.weight.flatten(1).float().cpu()) for m in layers]
