"""Invariances, checked with hypothesis over random shapes, scales and shifts."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import normlib.functional as NF

SETTINGS = settings(max_examples=40, deadline=None)
scales = st.floats(0.05, 20.0)
shifts = st.floats(-50.0, 50.0)
seeds = st.integers(0, 2**31 - 1)
# The invariances are exact only for eps -> 0: eps/sigma^2 changes when the input is rescaled.
# A tiny eps (in float64) makes that term negligible against the 1e-7 tolerance.
EPS = 1e-30


def randn(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-7)


@SETTINGS
@given(seeds, scales, shifts, st.integers(2, 9))
def test_layer_norm_invariant_to_per_example_rescaling_and_recentering(seed, scale, shift, d):
    x = randn(seed, 4, d)
    per_example_scale = scale * torch.linspace(0.5, 2.0, 4, dtype=torch.float64)[:, None]
    per_example_shift = shift * torch.linspace(-1.0, 1.0, 4, dtype=torch.float64)[:, None]
    close(NF.layer_norm(x * per_example_scale + per_example_shift, (d,), eps=EPS), NF.layer_norm(x, (d,), eps=EPS))


@SETTINGS
@given(seeds, scales, st.floats(0.5, 50.0), st.integers(2, 9))
def test_rms_norm_invariant_to_rescaling_not_recentering(seed, scale, shift, d):
    x = randn(seed, 4, d)
    close(NF.rms_norm(x * scale, (d,), eps=EPS), NF.rms_norm(x, (d,), eps=EPS))
    moved = NF.rms_norm(x + shift, (d,), eps=EPS)
    assert (moved - NF.rms_norm(x, (d,), eps=EPS)).abs().max() > 1e-3


@SETTINGS
@given(seeds, scales, shifts)
def test_batch_norm_invariant_to_dataset_rescaling_and_recentering(seed, scale, shift):
    x = randn(seed, 8, 3, 4)
    # one scale and shift per channel, shared by all examples ("the dataset")
    a = scale * torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)[None, :, None]
    b = shift * torch.tensor([1.0, -2.0, 0.3], dtype=torch.float64)[None, :, None]
    close(NF.batch_norm(x * a + b, None, None, training=True, eps=EPS),
          NF.batch_norm(x, None, None, training=True, eps=EPS))


@SETTINGS
@given(seeds, scales, shifts)
def test_instance_norm_invariant_to_per_instance_per_channel_affine(seed, scale, shift):
    x = randn(seed, 3, 2, 5, 4)
    a = scale * (randn(seed + 1, 3, 2, 1, 1).abs() + 0.1)
    b = shift * randn(seed + 2, 3, 2, 1, 1)
    close(NF.instance_norm(x * a + b, eps=EPS), NF.instance_norm(x, eps=EPS))


@SETTINGS
@given(seeds, st.integers(1, 3), st.integers(2, 5))
def test_group_norm_limits(seed, groups_per, spatial):
    channels = 2 * groups_per
    x = randn(seed, 3, channels, spatial, spatial)
    close(NF.group_norm(x, 1), NF.layer_norm(x, x.shape[1:]))
    close(NF.group_norm(x, channels), NF.instance_norm(x))


@SETTINGS
@given(seeds, scales, shifts)
def test_adain_output_carries_style_statistics(seed, scale, shift):
    content = randn(seed, 2, 3, 6, 6)
    style = randn(seed + 1, 2, 3, 5, 7) * scale + shift
    out = NF.adain(content, style, eps=EPS)
    var_o, mean_o = torch.var_mean(out, dim=(2, 3), correction=0)
    var_s, mean_s = torch.var_mean(style, dim=(2, 3), correction=0)
    close(mean_o, mean_s)
    close(var_o, var_s)
