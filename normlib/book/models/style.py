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
from collections.abc import Callable

import torch
from torch import nn

from normlib import _validation as V
from normlib.functional import adain

__all__ = ["VGG19Encoder", "RandomEncoder", "Decoder", "AdaINStylizer", "StylizationNetwork", "optimize_image",
           "channel_statistics", "style_loss", "content_loss", "encode_pool"]

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
        V.check_tensor(images, "images", min_dim=4)
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
        V.check_positive_int(width, "width")
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
    V.check_tensor(features, "features", min_dim=3)
    V.check_eps(eps)
    var, mean = torch.var_mean(features.flatten(2), dim=-1, correction=0)
    return mean, (var + eps).sqrt()


def style_loss(features: list[torch.Tensor], target: list) -> torch.Tensor:
    """Sum over depths of the squared differences between the channel means and standard
    deviations of ``features`` and ``target`` (averaged over images and channels), the style loss
    of Huang & Belongie (2017). ``target`` holds feature maps, or their
    :func:`channel_statistics` ``(mean, std)`` pairs (e.g. from :func:`encode_pool`); it may
    hold one image, compared with every image. Derived in ``chapters/07_adain.ipynb``."""
    if len(features) != len(target):
        raise ValueError(f"target: expected {len(features)} feature maps, got {len(target)}")
    loss = features[0].new_zeros(())
    for f, t in zip(features, target):
        (mf, sf), (mt, st) = channel_statistics(f), t if isinstance(t, tuple) else channel_statistics(t)
        loss = loss + (mf - mt).square().mean() + (sf - st).square().mean()
    return loss


def encode_pool(encoder: "_Encoder", images: torch.Tensor, chunk: int = 64
                ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Encode a pool of training images once, ``chunk`` at a time and without gradient: their
    deepest feature maps (content targets) and their :func:`channel_statistics` at every tap
    (style targets). The encoder is fixed, so a training loop that draws from the pool need not
    encode the same crop again at every step. Used in ``chapters/06_instance_norm.ipynb`` and
    ``chapters/07_adain.ipynb``."""
    V.check_positive_int(chunk, "chunk")
    deepest, statistics = [], []
    with torch.no_grad():
        for part in images.split(chunk):
            features = encoder(part)
            deepest.append(features[-1])
            statistics.append([channel_statistics(f) for f in features])
    return torch.cat(deepest), [tuple(torch.cat(parts) for parts in zip(*tap)) for tap in zip(*statistics)]


def content_loss(features: list[torch.Tensor], target: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the deepest feature maps (``target`` may be the deepest map
    itself, e.g. an AdaIN output). Derived in ``chapters/07_adain.ipynb``."""
    deepest = target[-1] if isinstance(target, (list, tuple)) else target
    if features[-1].shape != deepest.shape:
        raise ValueError(f"target: expected deepest features of shape {tuple(features[-1].shape)}, got {tuple(deepest.shape)}")
    return (features[-1] - deepest).square().mean()


class Decoder(nn.Module):
    """Maps an encoder's deepest features back to an RGB image, mirroring the encoder as in
    Huang & Belongie (2017): per stage, deep to shallow, 3x3 convolutions with ReLU and a 2x
    nearest-neighbour upsampling, reflection padding, and a last convolution to 3 channels
    without nonlinearity. ``channels`` are the encoder's channels at its taps (``encoder.channels``).
    The paper's decoder has no normalization; ``norm(channels)`` (e.g. ``normlib.nn.BatchNorm2d``)
    puts one after every convolution but the last, for its ablation (without it the module
    layout, and so the ``state_dict`` keys, are the paper's). Derived in
    ``chapters/07_adain.ipynb``."""

    def __init__(self, channels: list[int], norm: Callable[[int], nn.Module] | None = None):
        super().__init__()
        if len(channels) < 2 or any(not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"channels: expected at least two positive ints (shallow to deep), got {channels}")
        if norm is not None and not callable(norm):
            raise TypeError(f"norm: expected a callable that builds a layer from a channel count, got {norm!r}")

        def conv(a, b, normalized=True):
            layers = [nn.ReflectionPad2d(1), nn.Conv2d(a, b, 3)]
            return layers + [norm(b)] if norm is not None and normalized else layers

        layers = []
        deep_to_shallow = channels[::-1]
        for wide, narrow in zip(deep_to_shallow[:-1], deep_to_shallow[1:]):
            layers += [*conv(wide, narrow), nn.ReLU(), nn.Upsample(scale_factor=2, mode="nearest"),
                       *conv(narrow, narrow), nn.ReLU()]
        layers += conv(channels[0], 3, normalized=False)
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class AdaINStylizer(nn.Module):
    """Encoder, AdaIN, decoder: ``stylizer(content, style, alpha)`` decodes
    ``t = alpha * AdaIN(f(content), f(style)) + (1 - alpha) * f(content)`` (Huang & Belongie
    2017). Only the decoder is trained; :meth:`losses` returns the paper's content loss (the
    decoded image's deepest features against ``t``) and style loss (channel means and standard
    deviations at every tap against the style's). Derived in ``chapters/07_adain.ipynb``."""

    def __init__(self, encoder: _Encoder, decoder: Decoder | None = None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder if decoder is not None else Decoder(encoder.channels)

    def target(self, content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        return self._mix(self.encoder(content)[-1], self.encoder(style)[-1], alpha)

    @staticmethod
    def _mix(content_features: torch.Tensor, style_features: torch.Tensor, alpha: float) -> torch.Tensor:
        V.check_number(alpha, "alpha", 0, 1)
        return alpha * adain(content_features, style_features) + (1 - alpha) * content_features

    def forward(self, content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        return self.decoder(self.target(content, style, alpha))

    def losses(self, content: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(content_loss, style_loss)`` of the decoded images (alpha = 1)."""
        return self.feature_losses(self.encoder(content)[-1],
                                   [channel_statistics(f) for f in self.encoder(style)])

    def feature_losses(self, content_features: torch.Tensor, style_statistics: list) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`losses` from encodings computed beforehand (:func:`encode_pool`): the content's
        deepest feature maps and the style's channel statistics at every tap."""
        t = adain(content_features, style_statistics[-1])
        decoded_features = self.encoder(self.decoder(t))
        return content_loss(decoded_features, t), style_loss(decoded_features, style_statistics)


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, norm):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), norm(width), nn.ReLU(),
                                  nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), norm(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class StylizationNetwork(nn.Module):
    """A feed-forward network trained for one style, Johnson-style (Johnson et al. 2016, who use
    five residual blocks and transposed convolutions; Ulyanov et al. 2016): a 9x9 convolution,
    two stride-2 convolutions, ``residual_blocks`` residual blocks, two 2x nearest-neighbour
    upsamplings each followed by a 3x3 convolution, and a 9x9 convolution to RGB squashed into
    [0, 1] by a sigmoid. Every convolution but the last is followed by
    ``norm(channels)`` (e.g. ``normlib.nn.BatchNorm2d`` or ``lambda c: normlib.nn.InstanceNorm2d(c,
    affine=True)``) and, outside the residual additions, a ReLU. Reflection padding keeps the borders
    free of artefacts; height and width must be multiples of 4.

    With instance normalization after the first convolution, the output is invariant to a
    per-image contrast and brightness change ``a * x + b`` of the input (``a > 0``), up to ``eps``.
    Derived in ``chapters/06_instance_norm.ipynb``.
    """

    def __init__(self, norm, width: int = 16, residual_blocks: int = 3):
        super().__init__()
        V.check_positive_int(width, "width")
        V.check_positive_int(residual_blocks, "residual_blocks")

        def conv(a, b, kernel, stride=1):
            return [nn.ReflectionPad2d(kernel // 2), nn.Conv2d(a, b, kernel, stride)]

        w = width
        self.layers = nn.Sequential(
            *conv(3, w, 9), norm(w), nn.ReLU(),
            *conv(w, 2 * w, 3, 2), norm(2 * w), nn.ReLU(),
            *conv(2 * w, 4 * w, 3, 2), norm(4 * w), nn.ReLU(),
            *[_ResidualBlock(4 * w, norm) for _ in range(residual_blocks)],
            nn.Upsample(scale_factor=2, mode="nearest"), *conv(4 * w, 2 * w, 3), norm(2 * w), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"), *conv(2 * w, w, 3), norm(w), nn.ReLU(),
            *conv(w, 3, 9), nn.Sigmoid(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        V.check_tensor(images, "images", min_dim=4)
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected an (N, 3, H, W) RGB batch, got shape {tuple(images.shape)}")
        if images.shape[-2] % 4 or images.shape[-1] % 4 or min(images.shape[-2:]) < 8:
            raise ValueError(f"images: expected height and width that are multiples of 4 and at least 8, "
                             f"got {tuple(images.shape[-2:])}")
        return self.layers(images)


def optimize_image(encoder: _Encoder, content: torch.Tensor, style: torch.Tensor, steps: int,
                   style_weight: float = 1.0, lr: float = 0.05) -> tuple[torch.Tensor, list[float]]:
    """Optimization-based style transfer (Gatys et al. 2016) with the same encoder and losses:
    start from the content image and minimize ``content_loss(f(x), f(content)) + style_weight *
    style_loss(f(x), f(style))`` over the pixels with Adam. Returns the image (clamped to [0, 1])
    and the style loss before each step. Derived in ``chapters/07_adain.ipynb``."""
    V.check_positive_int(steps, "steps")
    image = content.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=lr)
    with torch.no_grad():
        content_target, style_target = encoder(content)[-1], encoder(style)
    style_losses = []
    for _ in range(steps):
        features = encoder(image)
        s_loss = style_loss(features, style_target)
        loss = content_loss(features, content_target) + style_weight * s_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            image.clamp_(0, 1)
        style_losses.append(s_loss.item())
    return image.detach(), style_losses
