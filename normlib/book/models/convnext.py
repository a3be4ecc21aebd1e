"""A ConvNeXt encoder trained as a fully convolutional masked autoencoder (FCMAE), sized for
28x28 digits, with the blocks of ConvNeXt V1 (LayerScale) and V2 (GRN), and the paper's
measure of feature collapse.

Derived in ``chapters/18_global_response_norm.ipynb``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF
from torch import nn

from normlib import nn as normlib_nn


class Block(nn.Module):
    """A ConvNeXt block on ``(N, C, H, W)``: 7x7 depthwise convolution, LayerNorm over the
    channels, a pointwise expansion to ``4 C`` channels, GELU, GRN (if ``grn``), a pointwise
    projection back to ``C`` and LayerScale (per-channel gains initialized at
    ``layer_scale``, if given), added to the input. ConvNeXt V1's block is
    ``grn=False, layer_scale=1e-6``, V2's ``grn=True, layer_scale=None``. ``expansion`` holds
    the last input of the projection, ``(N, H, W, 4 C)``, while ``keep_expansion`` is set."""

    def __init__(self, width: int, grn: bool = True, layer_scale: float | None = None):
        super().__init__()
        self.depthwise = nn.Conv2d(width, width, 7, padding=3, groups=width)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.expand = nn.Linear(width, 4 * width)
        self.grn = normlib_nn.GRN(4 * width) if grn else nn.Identity()
        self.project = nn.Linear(4 * width, width)
        self.layer_scale = None if layer_scale is None else nn.Parameter(torch.full((width,), float(layer_scale)))
        self.keep_expansion, self.expansion = False, None

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``keep``: an optional ``(N, 1, H, W)`` mask of the positions that exist (FCMAE's
        sparse convolution in dense form): the others are zeroed after the convolution and
        before GRN, so GRN's statistics cover the kept positions only."""
        h = self.depthwise(x) if keep is None else self.depthwise(x * keep) * keep
        h = TF.gelu(self.expand(self.norm(h.permute(0, 2, 3, 1))))  # channels last
        h = self.grn(h if keep is None else h * keep.permute(0, 2, 3, 1))
        if self.keep_expansion:
            self.expansion = h
        h = self.project(h)
        if self.layer_scale is not None:
            h = h * self.layer_scale
        return x + h.permute(0, 3, 1, 2)


class ConvNeXtMAE(nn.Module):
    """FCMAE on ``(N, 1, 28, 28)`` images: a 2x2 stride-2 stem to 14x14 positions, ``depth``
    blocks (:class:`~normlib.book.models.convnext.Block`) with ``grn`` and ``layer_scale`` at
    ``width`` channels (the encoder), then a decoder of one block with neither and a pointwise
    layer predicting each position's 2x2 pixels. ``forward(images, visible)`` takes a
    ``(N, 1, 28, 28)`` mask of visible pixels (1) from
    :func:`~normlib.book.models.convnext.patch_mask`: the encoder sees the visible pixels only
    (each block computes on the visible positions, the dense form of FCMAE's sparse
    convolutions), the decoder sees a learned mask token at the hidden positions. Returns the
    reconstruction, ``(N, 1, 28, 28)``."""

    def __init__(self, width: int = 32, depth: int = 4, grn: bool = True, layer_scale: float | None = None):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 2, stride=2)
        self.blocks = nn.ModuleList(Block(width, grn, layer_scale) for _ in range(depth))
        self.mask_token = nn.Parameter(torch.zeros(1, width, 1, 1))
        self.decoder = Block(width, grn=False)
        self.head = nn.Conv2d(width, 4, 1)

    def encode(self, images: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's ``(N, width, 14, 14)`` features of the visible pixels (all if ``None``)."""
        keep = None if visible is None else TF.max_pool2d(visible, 2)  # a position is visible or not
        h = self.stem(images if visible is None else images * visible)
        for block in self.blocks:
            h = block(h, keep)
        return h if keep is None else h * keep

    def forward(self, images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        h = self.encode(images, visible)
        keep = TF.max_pool2d(visible, 2)
        h = h + (1 - keep) * self.mask_token
        return TF.pixel_shuffle(self.head(self.decoder(h)), 2)

    def expansion_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Each encoder block's expansion features ``(N, 14, 14, 4 width)`` on whole images."""
        for block in self.blocks:
            block.keep_expansion = True
        try:
            self.encode(images)
            return [block.expansion for block in self.blocks]
        finally:
            for block in self.blocks:
                block.keep_expansion, block.expansion = False, None


def patch_mask(n: int, ratio: float, generator: torch.Generator, image_size: int = 28, patch: int = 4):
    """A ``(n, 1, image_size, image_size)`` float mask of visible pixels: the image cut into
    ``patch`` x ``patch`` squares (a 7x7 grid for digits, as FCMAE's 32-pixel patches on
    224-pixel images), a random ``ratio`` of them hidden (0) in each image."""
    grid = image_size // patch
    hidden = round(ratio * grid * grid)
    order = torch.rand(n, grid * grid, generator=generator).argsort(dim=1)
    visible = (order >= hidden).float().view(n, 1, grid, grid)
    return visible.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def masked_mse(model: ConvNeXtMAE, images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """The FCMAE loss: mean squared error of the reconstruction on the hidden pixels only."""
    hidden = 1 - visible
    error = (model(images, visible) - images).square() * hidden
    return error.sum() / hidden.sum().clamp_min(1)


def feature_cosine_distance(features: torch.Tensor) -> float:
    """ConvNeXt V2's measure of feature diversity for ``(N, *positions, C)`` features: in each
    image, the average over all ordered pairs of channels (a channel's map flattened to a
    vector, the pairs of a channel with itself included) of ``(1 - cos) / 2``, then the average
    over images. 0 when every channel map points the same way (collapse); ``(1 - 1/C) / 2`` for
    orthogonal maps. An all-zero (dead) map has a cosine of 0 with every map, itself included,
    so dead channels *raise* the measure."""
    maps = TF.normalize(features.flatten(1, -2).float(), dim=1)  # (N, positions, C), unit columns
    cosines = maps.transpose(1, 2) @ maps  # (N, C, C)
    return ((1 - cosines) / 2).mean().item()
