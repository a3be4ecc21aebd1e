"""Global response normalization: against a channel-by-channel transcription of the
ConvNeXt V2 paper's definition in both layouts, the identity at initialization, the
authors' and timm's state dicts, half precision, gradcheck, empty inputs and errors."""

import pytest
import torch

import normlib.functional as NF
from normlib import nn


def transcribed_grn(x, gamma, beta, eps=1e-6):
    """GRN of a channels-last ``(N, H, W, C)`` map written out one example and one channel at a
    time: g_c = sqrt(sum over positions of x_c^2), n_c = g_c / (average of g + eps),
    out_c = gamma_c * x_c * n_c + beta_c + x_c."""
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        energies = [x[i, :, :, c].square().sum().sqrt() for c in range(x.shape[-1])]
        average = sum(energies) / len(energies)
        for c, g in enumerate(energies):
            share = g / (average + eps)
            out[i, :, :, c] = gamma[c] * x[i, :, :, c] * share + beta[c] + x[i, :, :, c]
    return out


def test_matches_the_transcription_in_both_layouts():
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    gamma, beta = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    expected = transcribed_grn(x, gamma, beta)
    torch.testing.assert_close(NF.global_response_norm(x, gamma, beta), expected)
    first = NF.global_response_norm(x.permute(0, 3, 1, 2), gamma, beta, channels_last=False)
    torch.testing.assert_close(first, expected.permute(0, 3, 1, 2))
    # the authors' (1, 1, 1, C) parameters are the same values; one-dimensional maps work too
    torch.testing.assert_close(NF.global_response_norm(x, gamma.view(1, 1, 1, 6), beta.view(1, 1, 1, 6)), expected)
    line = x.flatten(1, 2)
    torch.testing.assert_close(NF.global_response_norm(line, gamma, beta), expected.flatten(1, 2))


def test_shares_average_one_and_scale_invariance():
    # n has mean 1 over the channels (up to eps), and n does not change when x is scaled, so
    # GRN(a x) = a GRN(x) with bias 0 (exactly for eps = 0; 1e-12 here, below the tolerance)
    x = torch.randn(2, 7, 7, 16, dtype=torch.float64)
    gamma = torch.ones(16, dtype=torch.float64)
    share = NF.global_response_norm(x, gamma, eps=1e-12) / x - 1
    torch.testing.assert_close(share.mean(dim=(1, 2)).mean(-1), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(NF.global_response_norm(5 * x, gamma, eps=1e-12),
                               5 * NF.global_response_norm(x, gamma, eps=1e-12))


def test_module_is_the_identity_at_init_and_loads_both_state_dicts():
    layer = nn.GRN(8)
    x = torch.randn(2, 5, 5, 8)
    assert torch.equal(layer(x), x)
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == {"weight": (8,), "bias": (8,)}
    gamma, beta = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    layer.load_state_dict({"gamma": gamma, "beta": beta})  # the authors' names and shapes
    torch.testing.assert_close(layer(x), transcribed_grn(x, gamma.flatten(), beta.flatten()))
    first = nn.GRN(8, channels_last=False)  # timm's channels-first shapes
    first.load_state_dict({"weight": gamma.view(1, 8, 1, 1), "bias": beta.view(1, 8, 1, 1)})
    torch.testing.assert_close(first(x.permute(0, 3, 1, 2)), layer(x).permute(0, 3, 1, 2))
    assert "channels_last=False" in repr(first)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_statistics_in_fp32(dtype):
    # 64 x 64 positions of values near 20: the sum of squares (1.6e6) overflows float16
    x = (torch.randn(2, 64, 64, 4) + 20).to(dtype)
    gamma, beta = torch.full((4,), 0.5), torch.zeros(4)
    ours = NF.global_response_norm(x, gamma.to(dtype), beta.to(dtype))
    assert ours.dtype == dtype and torch.isfinite(ours).all()
    expected = NF.global_response_norm(x.float(), gamma.to(dtype).float(), beta).to(dtype)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_gradcheck_zero_channel_and_empty_inputs():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(5, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: NF.global_response_norm(*a, eps=1e-6), (x, gamma, beta))
    assert torch.autograd.gradcheck(
        lambda x, g: NF.global_response_norm(x, g, channels_last=False), (x, gamma[:3]))
    # a channel that is zero everywhere (a dead channel) has a finite gradient
    dead = x.detach().clone()
    dead[..., 0] = 0
    dead.requires_grad_(True)
    NF.global_response_norm(dead, gamma.detach()).sum().backward()
    assert torch.isfinite(dead.grad).all()
    assert NF.global_response_norm(torch.empty(0, 4, 4, 5), torch.ones(5)).shape == (0, 4, 4, 5)
    assert nn.GRN(5, channels_last=False)(torch.empty(0, 5, 3, 3)).shape == (0, 5, 3, 3)


BAD = [
    (lambda: NF.global_response_norm(torch.randn(2, 3)), ValueError, "input: expected"),
    (lambda: NF.global_response_norm(torch.randn(2, 3, 3, 4), torch.ones(3)), ValueError,
     "weight: expected one value per channel (4)"),
    (lambda: NF.global_response_norm(torch.randn(2, 4, 3, 3), None, torch.ones(3), channels_last=False), ValueError,
     "bias: expected one value per channel (4)"),
    (lambda: NF.global_response_norm(torch.randn(2, 3, 3, 4), eps=-1.0), ValueError, "eps: expected"),
    (lambda: NF.global_response_norm(torch.randn(2, 3, 3, 4), channels_last=1), TypeError,
     "channels_last: expected a bool"),
    (lambda: nn.GRN(0), ValueError, "num_channels: expected a positive integer"),
    (lambda: nn.GRN(4)(torch.randn(2, 4, 3, 3)), ValueError, "input: expected 4 channels in dim -1"),
]


@pytest.mark.parametrize("call,error,message", BAD, ids=[m[:40] for _, _, m in BAD])
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


# The chapter's workshop: the FCMAE of normlib.book.models.convnext and the collapse measure

def test_patch_mask_hides_whole_patches_at_the_ratio():
    from normlib.book.models.convnext import patch_mask

    visible = patch_mask(5, 0.6, torch.Generator().manual_seed(0))
    assert visible.shape == (5, 1, 28, 28)
    patches = visible[:, 0, ::4, ::4]  # one pixel per 4 x 4 patch
    assert torch.equal(visible, patches.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None])
    assert (patches.flatten(1).sum(1) == 49 - round(0.6 * 49)).all()


def test_encoder_never_sees_hidden_positions_and_loss_counts_only_them():
    from normlib.book.models import ConvNeXtMAE
    from normlib.book.models.convnext import masked_mse, patch_mask

    torch.manual_seed(0)
    model = ConvNeXtMAE(width=8, depth=2, grn=True)
    for block in model.blocks:  # GRN active, so its global statistics are tested too
        torch.nn.init.normal_(block.grn.weight)
    images, visible = torch.randn(3, 1, 28, 28), patch_mask(3, 0.6, torch.Generator().manual_seed(1))
    keep = torch.nn.functional.max_pool2d(visible, 2)
    encoded = model.encode(images, visible)
    # anything at the hidden positions (here: noise added to the stem's output there) must not
    # reach the visible ones through the 7x7 convolutions or GRN's energies
    hook = model.stem.register_forward_hook(lambda m, args, out: out + torch.randn_like(out) * (1 - keep))
    noisy = model.encode(images, visible)
    hook.remove()
    torch.testing.assert_close(noisy, encoded)
    # as if the hidden positions did not exist: GRN's energies come from the visible ones only
    grn = model.blocks[0].grn
    seen = []
    hook = grn.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    model.encode(images, visible)
    hook.remove()
    last = keep.permute(0, 2, 3, 1)
    assert torch.equal(seen[0] * (1 - last), torch.zeros_like(seen[0]))
    # the loss counts the hidden pixels only: errors of 2 there and of 100 at visible pixels
    def reconstructs(error_hidden, error_visible):
        return lambda x, v: x + error_hidden * (1 - v) + error_visible * v

    assert masked_mse(reconstructs(2.0, 100.0), images, visible).item() == 4.0
    assert masked_mse(reconstructs(0.0, 100.0), images, visible).item() == 0.0


def test_blocks_of_v1_and_v2_and_their_expansion_features():
    from normlib.book.models import ConvNeXtMAE
    from normlib.book.models.convnext import Block

    x = torch.randn(2, 8, 14, 14)
    v1, v2 = Block(8, grn=False, layer_scale=1e-6), Block(8, grn=True)
    assert (v1(x) - x).abs().max() < 1e-5  # LayerScale: nearly the identity at init
    assert isinstance(v2.grn, nn.GRN) and v2.layer_scale is None and not isinstance(v1.grn, nn.GRN)
    model = ConvNeXtMAE(width=8, depth=3)
    features = model.expansion_features(torch.randn(2, 1, 28, 28))
    assert [tuple(f.shape) for f in features] == [(2, 14, 14, 32)] * 3
    assert all(b.expansion is None and not b.keep_expansion for b in model.blocks)


def test_feature_cosine_distance_against_a_pairwise_transcription():
    from normlib.book.models.convnext import feature_cosine_distance

    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    total = 0.0
    for image in x:
        maps = image.reshape(-1, 6)
        for i in range(6):
            for j in range(6):
                cos = maps[:, i] @ maps[:, j] / (maps[:, i].norm() * maps[:, j].norm())
                total += (1 - cos.item()) / 2
    assert abs(feature_cosine_distance(x) - total / (3 * 36)) < 1e-6
    same = torch.randn(2, 4, 4, 1).expand(2, 4, 4, 5)
    assert abs(feature_cosine_distance(same)) < 1e-6  # collapse: every channel the same map
    one_hot = torch.eye(6).view(1, 6, 6)  # orthogonal maps: 1/2 off the diagonal
    assert abs(feature_cosine_distance(one_hot) - 0.5 * (1 - 1 / 6)) < 1e-6
