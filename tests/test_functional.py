"""normlib.functional against torch.nn.functional: values, gradients, numerics, errors."""

import random

import pytest
import torch
import torch.nn.functional as TF

import normlib.functional as NF
from tolerances import DTYPES, STATISTICS_TOLERANCES, assert_close


def random_shape(rng, min_dim=2, max_dim=4):
    """(N, C, *) with N >= 2 and at least 2 values per instance and channel."""
    ndim = rng.randint(min_dim, max_dim)
    shape = [rng.randint(2, 5), rng.choice([2, 4, 6])] + [rng.randint(2, 6) for _ in range(ndim - 2)]
    return shape


def make(shape, dtype, layout="contiguous", offset=0.0, scale=1.0):
    x = torch.randn(shape, dtype=torch.float64) * scale + offset
    x = x.to(dtype)
    if layout == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontiguous":
        # a strided view with the same values: transpose twice through a copy
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
        assert not x.is_contiguous()
    return x


def params(channels, dtype):
    return torch.randn(channels, dtype=dtype), torch.randn(channels, dtype=dtype)


# torch CPU has no half-precision kernels for some ops; compare those against torch run in
# float32 on the same (rounded) input, then rounded to the dtype.
def torch_ref(fn, x, *args, **kwargs):
    if x.dtype in (torch.float16, torch.bfloat16):
        up = lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
        out = fn(up(x), *[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})
        return out.to(x.dtype)
    return fn(x, *args, **kwargs)


LAYOUTS = ["contiguous", "channels_last", "noncontiguous"]
CASES = [(seed, dtype, layout) for seed in range(4) for dtype in DTYPES for layout in LAYOUTS]


@pytest.mark.parametrize("seed,dtype,layout", CASES)
def test_batch_norm_matches_torch(seed, dtype, layout):
    rng = random.Random(seed)
    shape = random_shape(rng) if layout != "channels_last" else random_shape(rng, 4, 4)
    x = make(shape, dtype, layout)
    c = shape[1]
    w, b = params(c, dtype)
    sd = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    ours_stats = [torch.randn(c, dtype=sd).abs(), torch.rand(c, dtype=sd) + 0.5]
    ref_stats = [t.clone() for t in ours_stats]
    out = NF.batch_norm(x, *ours_stats, w, b, training=True, momentum=0.3)
    ref = torch_ref(TF.batch_norm, x, *ref_stats, w, b, training=True, momentum=0.3)
    assert_close(out, ref, dtype)
    for ours, theirs in zip(ours_stats, ref_stats):
        torch.testing.assert_close(ours, theirs, **STATISTICS_TOLERANCES[dtype])
    # evaluation mode with the updated statistics
    assert_close(NF.batch_norm(x, *ours_stats, w, b), torch_ref(TF.batch_norm, x, *ours_stats, w, b), dtype)


@pytest.mark.parametrize("seed,dtype,layout", CASES)
def test_layer_and_rms_norm_match_torch(seed, dtype, layout):
    rng = random.Random(seed)
    shape = random_shape(rng) if layout != "channels_last" else random_shape(rng, 4, 4)
    x = make(shape, dtype, layout)
    k = rng.randint(1, len(shape) - 1)
    normalized = tuple(shape[-k:])
    w, b = torch.randn(normalized, dtype=dtype), torch.randn(normalized, dtype=dtype)
    assert_close(NF.layer_norm(x, normalized, w, b), torch_ref(TF.layer_norm, x, normalized, w, b), dtype)
    assert_close(NF.layer_norm(x, normalized), torch_ref(TF.layer_norm, x, normalized), dtype)
    assert_close(NF.rms_norm(x, normalized, w, eps=1e-6), torch_ref(TF.rms_norm, x, normalized, w, eps=1e-6), dtype)
    # eps=None: the machine epsilon of the *input* dtype, as torch defines it
    expected = TF.rms_norm(x.double(), normalized, w.double(), eps=torch.finfo(dtype).eps).to(dtype)
    assert_close(NF.rms_norm(x, normalized, w), expected, dtype)


@pytest.mark.parametrize("seed,dtype,layout", CASES)
def test_group_norm_matches_torch(seed, dtype, layout):
    rng = random.Random(seed)
    shape = random_shape(rng, 3) if layout != "channels_last" else random_shape(rng, 4, 4)
    x = make(shape, dtype, layout, offset=3.0)
    c = shape[1]
    groups = rng.choice([g for g in (1, 2, c) if c % g == 0])
    w, b = params(c, dtype)
    assert_close(NF.group_norm(x, groups, w, b), torch_ref(TF.group_norm, x, groups, w, b), dtype)


@pytest.mark.parametrize("seed,dtype,layout", CASES)
def test_instance_norm_matches_torch(seed, dtype, layout):
    rng = random.Random(seed)
    shape = random_shape(rng, 3) if layout != "channels_last" else random_shape(rng, 4, 4)
    x = make(shape, dtype, layout)
    c = shape[1]
    w, b = params(c, dtype)
    sd = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    ours_stats = [torch.zeros(c, dtype=sd), torch.ones(c, dtype=sd)]
    ref_stats = [t.clone() for t in ours_stats]
    out = NF.instance_norm(x, *ours_stats, w, b, use_input_stats=True, momentum=0.2)
    ref = torch_ref(TF.instance_norm, x, *ref_stats, w, b, use_input_stats=True, momentum=0.2)
    assert_close(out, ref, dtype)
    for ours, theirs in zip(ours_stats, ref_stats):
        torch.testing.assert_close(ours, theirs, **STATISTICS_TOLERANCES[dtype])
    out = NF.instance_norm(x, *ours_stats, w, b, use_input_stats=False)
    assert_close(out, torch_ref(TF.instance_norm, x, *ours_stats, w, b, use_input_stats=False), dtype)


@pytest.mark.parametrize("seed,dtype", [(s, d) for s in range(4) for d in DTYPES])
def test_local_response_norm_matches_torch(seed, dtype):
    rng = random.Random(seed)
    x = make(random_shape(rng, 3), dtype, scale=3.0)
    size, alpha, beta, k = rng.randint(1, 5), rng.choice([1e-4, 0.1, 1.0]), rng.choice([0.5, 0.75]), rng.choice([1.0, 2.0])
    assert_close(NF.local_response_norm(x, size, alpha, beta, k),
                 torch_ref(TF.local_response_norm, x, size, alpha, beta, k), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_l2_normalize_matches_torch_and_is_unit_norm(dtype):
    x = make([5, 7, 16], dtype)
    for dim in (-1, 0, 1):
        out = NF.l2_normalize(x, dim=dim)
        assert_close(out, torch_ref(TF.normalize, x, dim=dim), dtype)
        norms = torch.linalg.vector_norm(out.double(), dim=dim)
        # half outputs: each of 16 entries rounded to 8 (bf16) or 11 (fp16) bits moves the norm by <1e-2
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-2 if dtype.itemsize == 2 else 1e-6, rtol=0)
    assert torch.equal(NF.l2_normalize(torch.zeros(2, 3)), torch.zeros(2, 3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_adain_imposes_style_statistics(dtype):
    content = make([3, 4, 6, 5], dtype, offset=2.0, scale=3.0)
    style = make([3, 4, 8, 7], dtype, offset=-1.0, scale=0.5)
    out = NF.adain(content, style, eps=1e-5).double()
    var_o, mean_o = torch.var_mean(out, dim=(2, 3), correction=0)
    var_s, mean_s = torch.var_mean(style.double(), dim=(2, 3), correction=0)
    tol = dict(atol=5e-2, rtol=5e-2) if dtype.itemsize == 2 else dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mean_o, mean_s, **tol)
    torch.testing.assert_close(var_o.sqrt(), var_s.sqrt(), **tol)
    # one style broadcast over the batch
    shared = NF.adain(content, style[:1]).double()
    torch.testing.assert_close(shared.mean(dim=(2, 3)), style[:1].double().mean(dim=(2, 3)).expand(3, 4), **tol)


def test_adain_from_style_statistics_matches_adain_from_the_feature_map():
    content, style = torch.randn(3, 4, 6, 5) * 3 + 2, torch.rand(3, 4, 8, 7) * 2 - 1
    var, mean = torch.var_mean(style, dim=(2, 3), correction=0)
    statistics = (mean, (var + 1e-5).sqrt())
    torch.testing.assert_close(NF.adain(content, statistics), NF.adain(content, style), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(NF.adain(content, (mean[:1], statistics[1][:1])), NF.adain(content, style[:1]),
                               atol=1e-6, rtol=1e-6)
    # the statistics say where the output's channels go, whatever produced them
    out = NF.adain(content, (torch.full((1, 4), 7.0), torch.full((1, 4), 0.5)))
    torch.testing.assert_close(out.mean(dim=(2, 3)), torch.full((3, 4), 7.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(2, 3), correction=0), torch.full((3, 4), 0.5), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- gradients
def gradcheck(fn, *tensors):
    inputs = [t.double().requires_grad_() for t in tensors]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_gradcheck_every_function():
    x = torch.randn(3, 4, 3, 2)
    w, b = torch.randn(4), torch.randn(4)
    gradcheck(lambda x, w, b: NF.batch_norm(x, None, None, w, b, training=True), x, w, b)
    rm, rv = torch.randn(4).double(), torch.rand(4).double() + 0.5
    gradcheck(lambda x, w, b: NF.batch_norm(x, rm, rv, w, b, training=False), x, w, b)
    gradcheck(lambda x, w, b: NF.layer_norm(x, (3, 2), w, b), x, torch.randn(3, 2), torch.randn(3, 2))
    gradcheck(lambda x, w: NF.rms_norm(x, (2,), w, eps=1e-5), x, torch.randn(2))
    gradcheck(lambda x, w, b: NF.group_norm(x, 2, w, b), x, w, b)
    gradcheck(lambda x, w, b: NF.instance_norm(x, weight=w, bias=b), x, w, b)
    gradcheck(lambda x: NF.local_response_norm(x, 3, alpha=0.5, beta=0.75, k=1.0), x)
    gradcheck(lambda c, s: NF.adain(c, s), x, torch.randn(3, 4, 2, 5))
    gradcheck(lambda c, m, s: NF.adain(c, (m, s)), x, torch.randn(3, 4), torch.rand(3, 4) + 0.5)
    gradcheck(lambda x: NF.l2_normalize(x, dim=1), x)
    gradcheck(lambda x, g: NF.scale_norm(x, g), x, torch.tensor(1.3))
    gradcheck(lambda x, a, w, b: NF.dyt(x, a, w, b), x, torch.tensor([0.7]), torch.randn(2), torch.randn(2))
    gradcheck(lambda x, a, w, b: NF.dyt(x, a, w, b, channels_last=False), x, torch.tensor([0.7]), w, b)


# ---------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("name", ["layer_norm", "group_norm", "batch_norm", "instance_norm"])
def test_large_mean_offset_is_stable_in_fp32(name):
    """mean 1e4, std 1: an E[x^2] - E[x]^2 variance would lose every significant digit."""
    x = torch.randn(8, 4, 64, dtype=torch.float64) + 1e4
    fns = {
        "layer_norm": lambda t: NF.layer_norm(t, (4, 64)),
        "group_norm": lambda t: NF.group_norm(t, 2),
        "batch_norm": lambda t: NF.batch_norm(t, None, None, training=True),
        "instance_norm": lambda t: NF.instance_norm(t),
    }
    x32 = x.float()
    out, exact = fns[name](x32).double(), fns[name](x32.double())
    relative = (out - exact).norm() / exact.norm()
    assert relative < 1e-3, f"relative error {relative:.2e}"


def test_rms_norm_large_values_stable():
    x = torch.randn(16, 256, dtype=torch.float64) * 1e3
    relative = (NF.rms_norm(x.float(), (256,)).double() - NF.rms_norm(x, (256,))).norm() / x.norm() * 1e3
    assert relative < 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_rows_give_finite_output(dtype):
    x = torch.full((4, 3, 5), 7.0, dtype=dtype)
    for out in (NF.layer_norm(x, (5,)), NF.rms_norm(x, (5,)), NF.group_norm(x, 3), NF.instance_norm(x),
                NF.batch_norm(x, None, None, training=True), NF.adain(x, x), NF.l2_normalize(x * 0)):
        assert torch.isfinite(out).all()
    assert (NF.layer_norm(x, (5,)) == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_statistics_in_fp32(dtype):
    """Rows whose mean of squares overflows fp16 (>65504) still normalize correctly."""
    x = (torch.randn(4, 64) * 300).to(dtype)
    expected = TF.layer_norm(x.float(), (64,)).to(dtype)
    assert torch.isfinite(NF.layer_norm(x, (64,))).all()
    assert_close(NF.layer_norm(x, (64,)), expected, dtype)
    assert_close(NF.rms_norm(x, (64,), eps=1e-6), TF.rms_norm(x.float(), (64,), eps=1e-6).to(dtype), dtype)


# ---------------------------------------------------------------------------- bad input
x4 = torch.randn(2, 4, 3, 3)
BAD = [
    (lambda: NF.layer_norm(x4, (5,)), ValueError, "normalized_shape: expected the input to end with (5,)"),
    (lambda: NF.layer_norm(x4, "3"), TypeError, "normalized_shape: expected an int or a sequence"),
    (lambda: NF.layer_norm(x4, (3,), weight=torch.ones(4)), ValueError, "weight: expected shape (3,)"),
    (lambda: NF.batch_norm(x4, None, None, torch.ones(3), training=True), ValueError, "weight: expected shape (4,)"),
    (lambda: NF.group_norm(x4, 3), ValueError, "num_groups: expected a divisor of the number of channels 4, got 3"),
    (lambda: NF.group_norm(x4, 0), ValueError, "num_groups: expected a positive integer"),
    (lambda: NF.layer_norm(x4, (3,), eps=0), ValueError, "eps: expected a positive finite number"),
    (lambda: NF.rms_norm(x4, (3,), eps=-1e-5), ValueError, "eps: expected a positive finite number"),
    (lambda: NF.batch_norm(torch.randn(1, 4), None, None, training=True), ValueError, "expected more than 1 value per channel"),
    (lambda: NF.batch_norm(x4, None, None, training=False), ValueError, "running_mean, running_var: expected tensors in evaluation mode"),
    (lambda: NF.batch_norm(x4, None, None, training=True, momentum=2), ValueError, "momentum: expected a number in [0, 1]"),
    (lambda: NF.instance_norm(torch.randn(2, 4, 1)), ValueError, "expected more than 1 spatial element"),
    (lambda: NF.instance_norm(torch.randn(2, 4)), ValueError, "input: expected at least 3 dimensions"),
    (lambda: NF.layer_norm(torch.ones(2, 3, dtype=torch.int64), (3,)), TypeError, "input: expected a floating-point tensor"),
    (lambda: NF.layer_norm([[1.0, 2.0]], (2,)), TypeError, "input: expected a torch.Tensor, got list"),
    (lambda: NF.layer_norm(x4, (3,), weight=torch.ones(3, device="meta")), ValueError, "weight: expected a tensor on cpu"),
    (lambda: NF.adain(x4, torch.randn(2, 3, 3, 3)), ValueError, "style: expected 4 dimensions and 4 channels"),
    (lambda: NF.adain(x4, torch.randn(3, 4, 3, 3)), ValueError, "style: expected batch size 1 or 2"),
    (lambda: NF.adain(x4, torch.randn(2, 4, 3, 3, device="meta")), ValueError, "style: expected a tensor on cpu"),
    (lambda: NF.adain(x4, (torch.zeros(2, 4),)), ValueError, "style: expected a feature map or a (mean, std) pair"),
    (lambda: NF.adain(x4, (torch.zeros(2, 3), torch.ones(2, 3))), ValueError, "style[0] (mean): expected shape (1, 4) or (2, 4)"),
    (lambda: NF.adain(x4, (torch.zeros(2, 4), [1.0])), TypeError, "style[1] (std): expected a torch.Tensor"),
    (lambda: NF.local_response_norm(x4, 0), ValueError, "size: expected a positive integer"),
    (lambda: NF.l2_normalize(x4, dim=4), ValueError, "dim: expected an int in [-4, 3]"),
    (lambda: NF.scale_norm(x4, 2.0), TypeError, "scale: expected a torch.Tensor with one element, got float"),
    (lambda: NF.scale_norm(x4, torch.ones(3)), ValueError, "scale: expected a floating-point tensor with one element"),
    (lambda: NF.scale_norm(x4, torch.ones(1), eps=0), ValueError, "eps: expected a positive finite number"),
    (lambda: NF.scale_norm(x4, torch.ones(1, device="meta")), ValueError, "scale: expected a tensor on cpu"),
    (lambda: NF.dyt(x4, 0.5), TypeError, "alpha: expected a torch.Tensor with one element, got float"),
    (lambda: NF.dyt(x4, torch.ones(2)), ValueError, "alpha: expected a floating-point tensor with one element"),
    (lambda: NF.dyt(x4, torch.ones(1), torch.ones(4)), ValueError, "weight: expected shape (3,)"),
    (lambda: NF.dyt(x4, torch.ones(1), bias=torch.ones(3), channels_last=False), ValueError, "bias: expected shape (4,)"),
    (lambda: NF.dyt(torch.randn(3), torch.ones(1), channels_last=False), ValueError, "input: expected at least 2"),
    (lambda: NF.dyt(x4, torch.ones(1), channels_last=1), TypeError, "channels_last: expected a bool"),
]


@pytest.mark.parametrize("call,error,message", BAD, ids=[m[:40] for _, _, m in BAD])
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)
