"""The encoders and perceptual losses shared by the instance-norm and AdaIN chapters."""

import math

import pytest
import torch

from normlib import nn
from normlib.book.models.style import (AdaINStylizer, Decoder, RandomEncoder, StylizationNetwork, VGG19Encoder,
                                  channel_statistics, content_loss, encode_pool, optimize_image, style_loss)

TORCHVISION_VGG19_CONVS = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
WIDTHS = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]


def torchvision_like_vgg19_state_dict(seed=0):
    """What ``torchvision.models.vgg19().state_dict()`` holds (features and classifier), random values."""
    g = torch.Generator().manual_seed(seed)
    state, in_channels = {}, 3
    for index, width in zip(TORCHVISION_VGG19_CONVS, WIDTHS):
        state[f"features.{index}.weight"] = torch.randn(width, in_channels, 3, 3, generator=g) * 0.05
        state[f"features.{index}.bias"] = torch.randn(width, generator=g) * 0.01
        in_channels = width
    for index in (0, 3, 6):  # the classifier (smaller than the real one here): ignored by the encoder
        state[f"classifier.{index}.weight"], state[f"classifier.{index}.bias"] = torch.zeros(10, 10), torch.zeros(10)
    return state


def test_vgg19_encoder_has_torchvision_layer_indices_and_taps():
    encoder = VGG19Encoder()
    convs = sorted({int(key.split(".")[1]) for key in encoder.state_dict()})
    assert convs == TORCHVISION_VGG19_CONVS[:9]          # up to relu4_1 = features[20]
    assert encoder.taps == [1, 6, 11, 20] and encoder.channels == [64, 128, 256, 512]
    features = encoder(torch.rand(2, 3, 32, 32))
    assert [tuple(f.shape) for f in features] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8), (2, 512, 4, 4)]


def test_vgg19_encoder_loads_torchvision_weights_from_a_file(tmp_path):
    state = torchvision_like_vgg19_state_dict()
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    encoder = VGG19Encoder().load_torchvision_weights(path)
    torch.testing.assert_close(encoder.features[19].weight, state["features.19.weight"])
    # the same computation as the plain layer stack with those weights
    x = torch.rand(1, 3, 16, 16)
    h = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = torch.relu(torch.nn.functional.conv2d(h, state["features.0.weight"], state["features.0.bias"], padding=1))
    torch.testing.assert_close(encoder(x)[0], h)
    broken = dict(state)
    del broken["features.7.weight"]
    with pytest.raises(ValueError, match="missing 1 of them"):
        VGG19Encoder().load_torchvision_weights(broken)
    broken = dict(state, **{"features.2.weight": torch.zeros(64, 32, 3, 3)})
    with pytest.raises(ValueError, match=r"features.2.weight of shape \(64, 64, 3, 3\)"):
        VGG19Encoder().load_torchvision_weights(broken)


def test_encoders_are_frozen_but_pass_gradients_to_the_image():
    for encoder in (VGG19Encoder(), RandomEncoder()):
        assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
        image = torch.rand(1, 3, 16, 16, requires_grad=True)
        style_loss(encoder(image), encoder(torch.rand(1, 3, 16, 16))).backward()
        assert image.grad is not None and image.grad.abs().sum() > 0
    for bad, match in [(torch.rand(1, 1, 16, 16), r"\(N, 3, H, W\) RGB batch"), (torch.rand(1, 3, 4, 16), "at least 8"),
                       (torch.rand(3, 16, 16), "at least 4 dimensions|expected an \\(N, 3, H, W\\)")]:
        with pytest.raises(ValueError, match=match):
            RandomEncoder()(bad)


def test_random_encoder_is_seeded_and_keeps_activations_at_scale():
    a, b, c = RandomEncoder(seed=0), RandomEncoder(seed=0), RandomEncoder(seed=1)
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
    assert a.channels == [16, 32, 64, 128] and RandomEncoder(width=32).channels == [32, 64, 128, 256]
    rms = [f.square().mean().sqrt().item() for f in a(torch.rand(4, 3, 64, 64))]
    assert all(0.1 < r < 10 for r in rms), rms  # He initialization: no vanishing or exploding features


def texture(kind, size=96, seed=0):
    """Synthetic RGB textures: oriented stripes, a checkerboard and blotchy colour noise."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    if kind == "stripes":
        base = 0.5 + 0.5 * torch.sin(2 * math.pi * (x + 0.3 * y) / 9)
        image = torch.stack([base, 0.3 * base + 0.2, 1 - base])
    elif kind == "checks":
        base = (((x // 6) + (y // 6)) % 2).float()
        image = torch.stack([0.8 * base + 0.1, 0.5 * torch.ones_like(base), 0.2 + 0.6 * (1 - base)])
    else:
        blotches = torch.nn.functional.interpolate(torch.rand(1, 3, size // 8, size // 8, generator=g), size=size, mode="bilinear")[0]
        image = blotches
    return (image + 0.05 * torch.randn(image.shape, generator=g)).clamp(0, 1)


def test_random_encoder_style_loss_tells_textures_apart():
    """Two crops of the same texture (different positions, different noise) must be closer in
    style loss than any crops of two different textures, by a clear margin (2x), for any filters."""
    crops = {kind: [texture(kind, seed=s)[:, 10 * s:10 * s + 64, 5 * s:5 * s + 64] for s in (1, 2)] for kind in ("stripes", "checks", "noise")}
    for seed in range(3):
        encoder = RandomEncoder(seed=seed)
        features = {kind: [encoder(crop[None]) for crop in pair] for kind, pair in crops.items()}
        same = max(style_loss(a, b).item() for a, b in features.values())
        different = min(style_loss(features[k][0], features[j][1]).item() for k in features for j in features if k != j)
        assert different > 2 * same, (seed, same, different)


def test_statistics_and_losses():
    f = torch.randn(2, 5, 7, 3) * 2 + 1
    mean, std = channel_statistics(f, eps=1e-30)
    torch.testing.assert_close(mean, f.mean((2, 3)))
    torch.testing.assert_close(std, f.std((2, 3), correction=0))
    maps = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
    assert style_loss(maps, maps).item() == 0 and content_loss(maps, maps).item() == 0
    shifted = [m * 3 + 1 for m in maps]
    assert style_loss(maps, shifted) > 1 and content_loss(maps, shifted[-1]) > 1
    assert style_loss(maps, [m[:1] for m in maps]) > 0   # one style image against a batch
    # the targets' statistics, computed once, give the same loss
    torch.testing.assert_close(style_loss(maps, [channel_statistics(m) for m in shifted]), style_loss(maps, shifted))
    with pytest.raises(ValueError, match="target: expected 2 feature maps"):
        style_loss(maps, maps[:1])
    with pytest.raises(ValueError, match="deepest features of shape"):
        content_loss(maps, maps[0])


def test_decoder_mirrors_the_encoder_back_to_image_size():
    encoder = RandomEncoder(width=8)
    decoder = Decoder(encoder.channels)
    deepest = encoder(torch.rand(2, 3, 32, 32))[-1]
    assert tuple(deepest.shape) == (2, 64, 4, 4)
    assert tuple(decoder(deepest).shape) == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="channels: expected at least two positive ints"):
        Decoder([8])
    # the ablation's norms: one after every convolution but the last; none by default, with the
    # paper's layout (and state_dict keys) unchanged
    normed = Decoder(encoder.channels, norm=nn.InstanceNorm2d)
    convs = [m for m in decoder.layers if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in normed.layers if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == len(convs) - 1 and not isinstance(normed.layers[-1], nn.InstanceNorm2d)
    assert [i for i, m in enumerate(decoder.layers) if isinstance(m, torch.nn.Conv2d)][:2] == [1, 5]
    assert tuple(normed(deepest).shape) == (2, 3, 32, 32)
    with pytest.raises(TypeError, match="norm: expected a callable"):
        Decoder(encoder.channels, norm="batch")


def test_adain_target_carries_the_style_statistics_and_alpha_interpolates():
    torch.manual_seed(0)
    stylizer = AdaINStylizer(RandomEncoder(width=8))
    content, style = torch.rand(2, 3, 32, 32), torch.rand(1, 3, 48, 48)
    content_features, style_features = stylizer.encoder(content)[-1], stylizer.encoder(style)[-1]
    torch.testing.assert_close(stylizer.target(content, style, alpha=0.0), content_features)
    mean, std = channel_statistics(stylizer.target(content, style, alpha=1.0), eps=1e-12)
    style_mean, style_std = channel_statistics(style_features, eps=1e-12)
    # channels that vary in both images: a dead ReLU channel is constant, and then eps = 1e-5
    # inside AdaIN's square roots dominates its standard deviation
    varying = (channel_statistics(content_features, eps=1e-12)[1] > 0.05) & (style_std > 0.05)
    torch.testing.assert_close(mean, style_mean.expand_as(mean), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(std[varying], style_std.expand_as(std)[varying], atol=1e-3, rtol=1e-2)
    assert varying.float().mean() > 0.5
    half = stylizer.target(content, style, alpha=0.5)
    torch.testing.assert_close(half, 0.5 * content_features + 0.5 * stylizer.target(content, style))
    with pytest.raises(ValueError, match=r"alpha: expected a number in \[0, 1\], got 1.5"):
        stylizer(content, style, alpha=1.5)


def test_only_the_decoder_learns_and_training_lowers_its_losses():
    torch.manual_seed(0)
    stylizer = AdaINStylizer(RandomEncoder(width=8))
    content, style = torch.rand(4, 3, 32, 32), torch.rand(1, 3, 32, 32)
    optimizer = torch.optim.Adam(stylizer.decoder.parameters(), lr=1e-3)
    totals = []
    for _ in range(40):
        c_loss, s_loss = stylizer.losses(content, style)
        loss = c_loss + s_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert all(p.grad is None for p in stylizer.encoder.parameters())
    assert totals[-1] < 0.5 * totals[0], (totals[0], totals[-1])


def test_encode_pool_matches_encoding_each_batch_and_feature_losses_match_losses():
    torch.manual_seed(0)
    stylizer = AdaINStylizer(RandomEncoder(width=8))
    content, style = torch.rand(5, 3, 32, 32), torch.rand(5, 3, 32, 32)
    deepest, statistics = encode_pool(stylizer.encoder, style, chunk=2)
    features = stylizer.encoder(style)
    torch.testing.assert_close(deepest, features[-1], atol=1e-5, rtol=1e-5)
    assert len(statistics) == len(features)
    for (mean, std), f in zip(statistics, features):
        torch.testing.assert_close(mean, channel_statistics(f)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(std, channel_statistics(f)[1], atol=1e-5, rtol=1e-5)
    content_deepest, _ = encode_pool(stylizer.encoder, content)
    for ours, direct in zip(stylizer.feature_losses(content_deepest, statistics), stylizer.losses(content, style)):
        torch.testing.assert_close(ours, direct, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="chunk: expected a positive integer"):
        encode_pool(stylizer.encoder, style, chunk=0)


def test_optimization_based_transfer_lowers_the_style_loss():
    torch.manual_seed(0)
    encoder = RandomEncoder(width=8)
    content, style = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32).pow(3)
    image, style_losses = optimize_image(encoder, content, style, steps=30, style_weight=10.0)
    assert image.shape == content.shape and 0 <= image.min() and image.max() <= 1
    assert style_losses[-1] < 0.5 * style_losses[0], (style_losses[0], style_losses[-1])


@pytest.mark.parametrize("norm_name", ["batch", "instance"])
def test_stylization_network_keeps_the_image_size_and_range(norm_name):
    norm = nn.BatchNorm2d if norm_name == "batch" else (lambda c: nn.InstanceNorm2d(c, affine=True))
    net = StylizationNetwork(norm, width=4, residual_blocks=1)
    out = net(torch.rand(2, 3, 16, 20))
    assert out.shape == (2, 3, 16, 20) and out.min() >= 0 and out.max() <= 1
    assert sum(isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) for m in net.modules()) == 7
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.rand(1, 3, 18, 20))
    with pytest.raises(ValueError, match="RGB"):
        net(torch.rand(1, 1, 16, 16))


def test_instance_norm_network_ignores_each_images_contrast_and_brightness():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    contrast = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64).view(3, 1, 1, 1)
    brightness = torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64).view(3, 1, 1, 1)
    changed = contrast * images + brightness
    # eps -> 0 makes the invariance exact; float64 keeps the comparison tight
    instance = StylizationNetwork(lambda c: nn.InstanceNorm2d(c, affine=True, eps=1e-12), width=4, residual_blocks=1).double()
    torch.testing.assert_close(instance(changed), instance(images))
    batch = StylizationNetwork(lambda c: nn.BatchNorm2d(c, eps=1e-12), width=4, residual_blocks=1).double()
    assert (batch(changed) - batch(images)).abs().max() > 1e-3   # BN mixes the images' statistics


def test_show_images_draws_clamped_images_without_ticks():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from normlib.book import plot
    fig, axes = plt.subplots(1, 2)
    plot.show_images(axes, [torch.rand(3, 4, 5) * 3 - 1, torch.rand(3, 4, 5)], ["first", "second"])
    drawn = axes[0].images[0].get_array()
    assert drawn.shape == (4, 5, 3) and drawn.min() >= 0 and drawn.max() <= 1
    assert axes[1].get_title() == "second" and not axes[0].get_xticks().size
    plt.close(fig)
