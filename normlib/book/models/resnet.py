"""Pre-activation residual networks for small images, batch-normalized, unnormalized or
normalizer-free (NF-ResNet, Brock et al. 2021), and the signal propagation statistics of their
residual streams.

Derived in ``chapters/11_normalizer_free.ipynb``.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from normlib import nn as normlib_nn

__all__ = ["ResNet", "signal_propagation", "RELU_GAMMA"]

RELU_GAMMA = math.sqrt(2 / (1 - 1 / math.pi))
"""``1 / std(relu(z))`` for ``z ~ N(0, 1)``: the factor that gives a ReLU's output unit variance."""

KINDS = ("bn", "plain", "nf")


def _conv(kind: str, scaled_ws: bool, gamma: float):
    """The convolution of a ``kind`` of network: scaled WS (with the activation's ``gamma``)
    for ``"nf"``, else a plain one, without bias in front of a BN."""
    if kind == "nf" and scaled_ws:
        return partial(normlib_nn.ScaledStdConv2d, gamma=gamma)
    return partial(nn.Conv2d, bias=kind != "bn")


class Block(nn.Module):
    """One pre-activation residual block, ``shortcut + alpha * branch(pre(x))``:

    * ``"bn"``: ``pre = relu(bn(x))``, branch conv-BN-ReLU-conv;
    * ``"plain"``: ``pre = relu(x)``, branch conv-ReLU-conv with He-initialized weights;
    * ``"nf"``: ``pre = relu(x / beta)``, branch conv-ReLU-conv with scaled weight
      standardization and ``gamma`` (plain He-initialized convolutions if not ``scaled_ws``).

    The shortcut is ``x``, or a strided 1x1 convolution of ``pre`` where the shape changes (a
    transition block). ``skipinit`` multiplies the branch by a learnable scalar starting at 0.
    """

    def __init__(self, kind: str, in_channels: int, out_channels: int, stride: int, alpha: float = 1.0,
                 beta: float = 1.0, scaled_ws: bool = True, skipinit: bool = False):
        super().__init__()
        self.kind, self.alpha, self.beta = kind, alpha, beta
        conv = _conv(kind, scaled_ws, RELU_GAMMA)
        self.pre_norm = normlib_nn.BatchNorm2d(in_channels) if kind == "bn" else nn.Identity()
        transition = stride != 1 or in_channels != out_channels
        self.shortcut = conv(in_channels, out_channels, 1, stride) if transition else None
        middle = [normlib_nn.BatchNorm2d(out_channels)] if kind == "bn" else []
        self.branch = nn.Sequential(conv(in_channels, out_channels, 3, stride, padding=1), *middle, nn.ReLU(),
                                    conv(out_channels, out_channels, 3, padding=1))
        self.skip_gain = nn.Parameter(torch.zeros(())) if skipinit else None

    @property
    def branch_scale(self) -> float | torch.Tensor:
        """What the branch's output is multiplied by: ``alpha``, times the SkipInit gain."""
        return self.alpha if self.skip_gain is None else self.alpha * self.skip_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.pre_norm(x / self.beta if self.kind == "nf" else x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        return shortcut + self.branch_scale * self.branch(pre)


class ResNet(nn.Module):
    """A pre-activation residual network: a 3x3 stride-2 stem convolution to ``widths[0]``
    channels, then one stage per entry of ``blocks`` (``blocks[s]`` residual blocks of
    ``widths[s]`` channels; each stage after the first halves the resolution in its first,
    transition block), a final ReLU (after a BN for ``"bn"``), global average pooling and a
    linear classifier.

    ``kind`` is ``"bn"`` (BatchNorm before each ReLU), ``"plain"`` (no normalization,
    He-initialized convolutions with zero biases) or ``"nf"`` (NF-ResNet: block ``i`` computes
    ``x + alpha * f(x / beta_i)`` with ``beta_i`` the residual stream's expected standard
    deviation, :meth:`expected_variances`, and convolutions with scaled weight standardization,
    :class:`normlib.nn.ScaledStdConv2d`, or plain He-initialized ones if not ``scaled_ws``).
    ``skipinit`` gives every branch a learnable scalar gain starting at 0 (De & Smith 2020).

    Derived in ``chapters/11_normalizer_free.ipynb``.
    """

    def __init__(self, kind: str = "nf", blocks: tuple[int, ...] = (2, 2), widths: tuple[int, ...] = (16, 32),
                 alpha: float = 0.2, scaled_ws: bool = True, skipinit: bool = False, in_channels: int = 1,
                 num_classes: int = 10):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        if len(blocks) != len(widths) or not blocks or min(blocks) < 1:
            raise ValueError(f"blocks: expected at least one block per stage, one stage per width {widths}, "
                             f"got {blocks}")
        self.kind, self.alpha = kind, alpha if kind == "nf" else 1.0
        self.stem = _conv(kind, scaled_ws, 1.0)(in_channels, widths[0], 3, 2, padding=1)  # no activation before it
        # the residual stream's expected variance, 1 after the stem: alpha^2 more per block, back
        # to 1 + alpha^2 after a block whose shortcut is a convolution of the normalized input
        layers, channels, variance, self._expected = [], widths[0], 1.0, []
        for stage, (count, width) in enumerate(zip(blocks, widths)):
            for i in range(count):
                stride = 2 if stage and not i else 1
                block = Block(kind, channels, width, stride, self.alpha, math.sqrt(variance), scaled_ws, skipinit)
                variance = (1.0 if block.shortcut is not None else variance) + self.alpha ** 2
                layers.append(block)
                self._expected.append(variance)
                channels = width
        self.blocks = nn.Sequential(*layers)
        self.final_norm = normlib_nn.BatchNorm2d(channels) if kind == "bn" else nn.Identity()
        self.head = nn.Linear(channels, num_classes)
        for module in self.modules():  # He initialization where nothing standardizes the weights
            if type(module) is nn.Conv2d:
                nonlinearity = "linear" if module is self.stem else "relu"
                nn.init.kaiming_normal_(module.weight, nonlinearity=nonlinearity)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def expected_variances(self) -> list[float]:
        """The residual stream's variance after each block that the NF-ResNet's ``beta``s assume
        (meaningful for ``"nf"``; ``alpha`` is 1 for the other kinds)."""
        return list(self._expected)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)`` for images of shape ``(N, in_channels, H, W)``."""
        if images.dim() != 4:
            raise ValueError(f"images: expected shape (N, C, H, W), got {tuple(images.shape)}")
        features = torch.relu(self.final_norm(self.blocks(self.stem(images))))
        return self.head(features.mean(dim=(2, 3)))


@torch.no_grad()
def signal_propagation(model: ResNet, images: torch.Tensor) -> dict[str, list[float]]:
    """The statistics of a Signal Propagation Plot (Brock et al. 2021), one value per block, for
    one forward pass of ``images`` in the model's current mode: ``squared_mean``, the average
    over channels of the squared channel mean of the block's output (the residual stream);
    ``variance``, the average over channels of its channel variance; ``branch_variance``, the
    same for the residual branch's contribution (``alpha * f``). Channel statistics are over
    the batch and the positions, in float64.

    Derived in ``chapters/11_normalizer_free.ipynb``.
    """
    records = {"squared_mean": [], "variance": [], "branch_variance": []}

    def channel_stats(x):
        var, mean = torch.var_mean(x.double().transpose(0, 1).flatten(1), dim=1, correction=0)
        return mean.square().mean().item(), var.mean().item()

    def after_block(block, args, output):
        squared_mean, variance = channel_stats(output)
        records["squared_mean"].append(squared_mean)
        records["variance"].append(variance)

    def after_branch(block):
        def hook(branch, args, output):
            records["branch_variance"].append(channel_stats(block.branch_scale * output)[1])
        return hook

    handles = []
    for block in model.blocks:
        handles.append(block.register_forward_hook(after_block))
        handles.append(block.branch.register_forward_hook(after_branch(block)))
    try:
        model(images)
    finally:
        for handle in handles:
            handle.remove()
    return records
