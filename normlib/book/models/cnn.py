"""A LeNet-style convolutional network with a choice of normalization.

Derived in ``chapters/05_group_norm.ipynb``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

NormFactory = Callable[[int], nn.Module]


class SmallCNN(nn.Module):
    """Two convolutional stages (5x5 convolution without padding, norm, ReLU, 2x2 max-pool), a
    hidden fully connected layer (norm, ReLU) and a linear classifier; on 28x28 MNIST digits
    the stages see 24x24 and 8x8 positions and the hidden layer one.

    ``conv_norm(channels)`` builds the normalization of each convolutional stage (applied to
    ``(N, C, H, W)``) and ``fc_norm(width)`` that of the hidden layer (applied to ``(N, C)``:
    a layer without spatial extent, where a batch norm's statistics come from ``N`` values
    only). ``None`` leaves a layer unnormalized; a layer followed by a norm has no bias (the
    norm's ``beta`` takes its place). ``conv`` builds the convolutions, called like
    ``nn.Conv2d(in_channels, out_channels, 5, bias=...)``: :class:`normlib.nn.WSConv2d` for
    weight standardization.

    Derived in ``chapters/05_group_norm.ipynb``.
    """

    def __init__(self, conv_norm: NormFactory | None = None, fc_norm: NormFactory | None = None,
                 widths: tuple[int, int] = (16, 32), hidden: int = 64, in_channels: int = 1,
                 image_size: int = 28, num_classes: int = 10, conv: Callable[..., nn.Module] = nn.Conv2d):
        super().__init__()
        size = image_size
        stages = []
        for width in widths:
            layers = [conv(in_channels, width, 5, bias=conv_norm is None)]
            layers += [conv_norm(width)] if conv_norm is not None else []
            stages.append(nn.Sequential(*layers, nn.ReLU(), nn.MaxPool2d(2)))
            in_channels, size = width, (size - 4) // 2
        if size < 1:
            raise ValueError(f"image_size: expected at least 16 for two 5x5 stages, got {image_size}")
        self.features = nn.Sequential(*stages, nn.Flatten())
        hidden_layers = [nn.Linear(in_channels * size * size, hidden, bias=fc_norm is None)]
        hidden_layers += [fc_norm(hidden)] if fc_norm is not None else []
        self.hidden = nn.Sequential(*hidden_layers, nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)`` for images of shape ``(N, in_channels, H, W)``."""
        if images.dim() != 4:
            raise ValueError(f"images: expected shape (N, C, H, W), got {tuple(images.shape)}")
        return self.head(self.hidden(self.features(images)))
