"""Feature encoders and the perceptual losses of the style chapters.

Perceptual losses compare images through the feature maps of a convolutional encoder: the
*content* loss compares the deepest features, the *style* loss compares the per-channel mean and
standard deviation of the features at several depths (the statistics that instance normalization
removes and AdaIN imposes). Two encoders share one interface, ``encoder(images) -> list of
feature maps`` (one per depth, shallow to deep):

* :class:`VGG19Encoder`, VGG-19 up to ``relu4_1`` as in Huang & Belongie (2017), with the layer
  indices of ``torchvision.models.vgg19().features`` so that a reader's pretrained torchvision
  weights load (:meth:`VGG19Encoder.load_torchvision_weights`). No pretrained weights can be
  downloaded while the book builds, so the chapters use it only at ``SCALE = "full"``.
* :class:`RandomEncoder`, the same four-stage layout, narrower, with fixed random filters. The
  statistics of random convolutional features already describe textures well enough to
  synthesize them (Ustyuzhaninov et al. 2017), which is what a style loss needs; the chapters use
  it at ``SCALE = "ci"`` and test that it tells textures apart.

Derived in ``chapters/06_instance_norm.ipynb`` and ``chapters/07_adain.ipynb``.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from normlib import _checks as C

__all__ = ["VGG19Encoder", "RandomEncoder", "channel_statistics", "style_loss", "content_loss"]

# torchvision's VGG-19 "features" up to relu4_1: out-channels of each conv, "M" a 2x2 max-pool.
_VGG19_TO_RELU4_1 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _conv_relu_stack(widths: list, in_channels: int = 3) -> tuple[nn.Sequential, list[int]]:
    """Conv 3x3 + ReLU per width, 2x2 max-pool per "M"; returns the stack and the indices of the
    first ReLU after each pool (and of the very first ReLU): the ``reluN_1`` outputs."""
    layers, taps = [], []
    for width in widths:
        if width == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        starts_stage = not layers or isinstance(layers[-1], nn.MaxPool2d)
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()]
        if starts_stage:
            taps.append(len(layers) - 1)
        in_channels = width
    return nn.Sequential(*layers), taps


class _Encoder(nn.Module):
    """Normalizes RGB images in [0, 1] with ImageNet statistics and returns the feature maps
    at ``relu1_1, relu2_1, relu3_1, relu4_1``. Its weights are fixed (``requires_grad=False``)."""

    def __init__(self, widths: list):
        super().__init__()
        self.features, self.taps = _conv_relu_stack(widths)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @property
    def channels(self) -> list[int]:
        return [self.features[i - 1].out_channels for i in self.taps]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        C.check_tensor(images, "images", min_dim=4)
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected an (N, 3, H, W) RGB batch, got shape {tuple(images.shape)}")
        if min(images.shape[-2:]) < 8:
            raise ValueError(f"images: expected height and width of at least 8 (three 2x2 poolings), got {tuple(images.shape[-2:])}")
        x = (images - self.mean) / self.std
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x)
        return outputs


class VGG19Encoder(_Encoder):
    """VGG-19 up to ``relu4_1`` (layers 0-20 of ``torchvision.models.vgg19().features``, same
    ``state_dict`` keys ``features.<index>.weight``), randomly initialized until
    :meth:`load_torchvision_weights` is called. Derived in ``chapters/07_adain.ipynb``."""

    def __init__(self):
        super().__init__(_VGG19_TO_RELU4_1)

    def load_torchvision_weights(self, weights: str | os.PathLike | dict) -> "VGG19Encoder":
        """Load the convolutions from a torchvision VGG-19 ``state_dict`` (or a file saved with
        ``torch.save``, e.g. ``vgg19-dcbb9e9d.pth``); later layers and the classifier are ignored."""
        state = torch.load(weights, map_location="cpu", weights_only=True) if not isinstance(weights, dict) else weights
        own = self.state_dict()
        missing = [key for key in own if key not in state]
        if missing:
            raise ValueError(f"weights: expected a torchvision VGG-19 state_dict with keys {missing[:3]}..., "
                             f"missing {len(missing)} of them")
        for key, value in own.items():
            if state[key].shape != value.shape:
                raise ValueError(f"weights: expected {key} of shape {tuple(value.shape)}, got {tuple(state[key].shape)}")
        self.load_state_dict({key: state[key] for key in own})
        return self


class RandomEncoder(_Encoder):
    """VGG-19's layout up to ``relu4_1`` at ``width`` / 64 of its channels, with fixed random
    filters drawn from ``seed`` (He initialization, zero bias, so activations keep their scale
    with depth). Used for perceptual losses where no pretrained encoder is available.
    Derived in ``chapters/06_instance_norm.ipynb``."""

    def __init__(self, width: int = 16, seed: int = 0):
        C.check_positive_int(width, "width")
        super().__init__([w if w == "M" else w * width // 64 for w in _VGG19_TO_RELU4_1])
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in self.features:
                if isinstance(layer, nn.Conv2d):
                    fan_in = layer.in_channels * 9
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
                    layer.bias.zero_()


def channel_statistics(features: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and standard deviation ``sqrt(var + eps)`` of ``(N, C, H, W)``
    features, each ``(N, C)``: the statistics instance normalization removes.
    Derived in ``chapters/07_adain.ipynb``."""
    C.check_tensor(features, "features", min_dim=3)
    C.check_eps(eps)
    var, mean = torch.var_mean(features.flatten(2), dim=-1, correction=0)
    return mean, (var + eps).sqrt()


def style_loss(features: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """Sum over depths of the squared differences between the channel means and standard
    deviations of ``features`` and ``target`` (averaged over images and channels), the style loss
    of Huang & Belongie (2017). ``target`` may hold one image, compared with every image.
    Derived in ``chapters/07_adain.ipynb``."""
    if len(features) != len(target):
        raise ValueError(f"target: expected {len(features)} feature maps, got {len(target)}")
    loss = features[0].new_zeros(())
    for f, t in zip(features, target):
        (mf, sf), (mt, st) = channel_statistics(f), channel_statistics(t)
        loss = loss + (mf - mt).square().mean() + (sf - st).square().mean()
    return loss


def content_loss(features: list[torch.Tensor], target: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the deepest feature maps (``target`` may be the deepest map
    itself, e.g. an AdaIN output). Derived in ``chapters/07_adain.ipynb``."""
    deepest = target[-1] if isinstance(target, (list, tuple)) else target
    if features[-1].shape != deepest.shape:
        raise ValueError(f"target: expected deepest features of shape {tuple(features[-1].shape)}, got {tuple(deepest.shape)}")
    return (features[-1] - deepest).square().mean()
