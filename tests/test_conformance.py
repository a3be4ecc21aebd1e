"""Every path of normlib.functional against the reference layer (normlib.reference), and
torch's semantics at the edges: empty batches, mixed dtypes, which path is taken."""

import pytest
import torch
import torch.nn.functional as TF

import normlib.functional as NF
from normlib import reference
from tolerances import DTYPES, TOLERANCES, assert_close

HALF = (torch.float16, torch.bfloat16)
GRADIENT_TOLERANCES = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-4, rtol=1e-4)}


def per_channel(c, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(dtype), torch.randn(
        c, generator=g, dtype=torch.float64).to(dtype)


def running(c, dtype):
    sd = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.randn(c, dtype=sd).abs(), torch.rand(c, dtype=sd) + 0.5


# (name, normlib call, reference call); each takes (x, weight, bias, stats) with x of shape (N, C, H, W)
OPS = {
    "batch_norm_train": (lambda x, w, b, s: NF.batch_norm(x, *s, w, b, True, 0.3),
                         lambda x, w, b, s: reference.batch_norm(x, *s, w, b, True, 0.3)),
    "batch_norm_eval": (lambda x, w, b, s: NF.batch_norm(x, *s, w, b, False),
                        lambda x, w, b, s: reference.batch_norm(x, *s, w, b, False)),
    "layer_norm": (lambda x, w, b, s: NF.layer_norm(x, x.shape[-1:], w, b),
                   lambda x, w, b, s: reference.layer_norm(x, x.shape[-1:], w, b)),
    "rms_norm": (lambda x, w, b, s: NF.rms_norm(x, x.shape[-1:], w, 1e-6),
                 lambda x, w, b, s: reference.rms_norm(x, x.shape[-1:], w, 1e-6)),
    "group_norm": (lambda x, w, b, s: NF.group_norm(x, 2, w, b),
                   lambda x, w, b, s: reference.group_norm(x, 2, w, b)),
    "instance_norm": (lambda x, w, b, s: NF.instance_norm(x, *s, w, b, True, 0.3),
                      lambda x, w, b, s: reference.instance_norm(x, *s, w, b, True, 0.3)),
    "instance_norm_eval": (lambda x, w, b, s: NF.instance_norm(x, *s, w, b, False),
                           lambda x, w, b, s: reference.instance_norm(x, *s, w, b, False)),
}
ROWWISE = {"layer_norm", "rms_norm"}


def arguments(name, x, param_dtype):
    c = x.shape[-1] if name in ROWWISE else x.shape[1]
    w, b = per_channel(c, param_dtype)
    return w, b, running(x.shape[1], x.dtype)


@pytest.mark.parametrize("param_dtype", ["same", "float32"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", OPS)
def test_every_cpu_path_computes_the_reference(name, dtype, param_dtype):
    """Values, running statistics and gradients agree with the reference, with parameters of
    the input's dtype and float32 parameters beside any input (torch's mixed-dtype kernels
    take the half-precision ones; the reference path takes the rest)."""
    pd = dtype if param_dtype == "same" else torch.float32
    x = (torch.randn(6, 4, 5, 8, dtype=torch.float64) * 2 + 3).to(dtype)
    w, b, stats = arguments(name, x, pd)
    ours_fn, ref_fn = OPS[name]
    ref_stats = [s.clone() for s in stats]
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    ref_leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    out = ours_fn(*leaves, stats)
    expected = ref_fn(*ref_leaves, ref_stats)
    assert out.dtype == expected.dtype == x.dtype  # the output has the input's dtype, as in torch
    assert_close(out, expected, dtype)
    for s, r in zip(stats, ref_stats):
        torch.testing.assert_close(s, r, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dy, allow_unused=True)
    ref_grads = torch.autograd.grad(expected, ref_leaves, dy, allow_unused=True)
    for g, r in zip(grads, ref_grads):
        if r is None:
            assert g is None or not g.any()
            continue
        # Half precision: both gradients are rounded once to the input's dtype, as outputs are.
        # float32/64: a parameter's gradient sums 240 products in another order than torch's.
        tol = GRADIENT_TOLERANCES.get(dtype) or TOLERANCES[dtype]
        torch.testing.assert_close(g.to(r.dtype), r, **tol)


@pytest.mark.parametrize("name", OPS)
def test_large_mean_keeps_a_stable_variance(name):
    """A mean 10^4 standard deviations away from zero, in float32: E[x^2] - E[x]^2 would lose
    every digit (float32 resolves 1e8 to about 8); a stable variance keeps the output within a
    few ulps of 10^4, i.e. ~1e-2 of the normalized values."""
    x = torch.randn(8, 4, 6, 16, dtype=torch.float64) + 1e4
    w, b, stats = arguments(name, x, torch.float64)
    ours_fn, ref_fn = OPS[name]
    if name.endswith("eval") or name == "rms_norm":
        pytest.skip("uses given statistics or no centering: no variance is computed")
    exact = ref_fn(x, w, b, [s.clone() for s in stats])
    x32, w32, b32 = x.float(), w.float(), b.float()
    out = ours_fn(x32, w32, b32, [s.float() for s in stats])
    assert (out.double() - exact).abs().max() < 1e-2


def test_the_fast_path_is_taken_on_cpu(monkeypatch):
    """float32 goes to torch's native op; half-precision BatchNorm and InstanceNorm (whose torch
    CPU kernels lose accuracy at large means) and mixed dtypes torch refuses go to the reference."""
    calls = []
    for fn in ("batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm"):
        original = getattr(reference, fn)
        monkeypatch.setattr(reference, fn, lambda *a, _f=original, _n=fn, **k: calls.append(_n) or _f(*a, **k))
    x = torch.randn(4, 6, 5, 5)
    NF.batch_norm(x, None, None, training=True)
    NF.layer_norm(x, (5,))
    NF.rms_norm(x, (5,))
    NF.group_norm(x, 3)
    NF.instance_norm(x)
    assert calls == []
    NF.group_norm(x.bfloat16(), 3)
    NF.rms_norm(x.half(), (5,))
    assert calls == []
    NF.batch_norm(x.bfloat16(), None, None, training=True)
    NF.instance_norm(x.half())
    NF.layer_norm(x.bfloat16(), (5,))
    NF.layer_norm(x, (5,), torch.ones(5, dtype=torch.bfloat16))  # float32 input, bf16 weight
    NF.group_norm(x[:0], 3)  # empty
    assert calls == ["batch_norm", "instance_norm", "layer_norm", "layer_norm", "group_norm"]


def test_half_precision_layer_norm_weight_gradients():
    """Why half-precision LayerNorm takes the reference path on CPU: torch's CPU backward gets
    the weight gradient of a bf16 input several times less accurate than float32 accumulation."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(240, 8, dtype=torch.float64, generator=g) * 2 + 3).to(torch.bfloat16)
    dy = torch.randn(240, 8, dtype=torch.float64, generator=g).to(torch.bfloat16)
    w = torch.ones(8, dtype=torch.float32)

    def weight_gradient(f, x, w):
        w = w.clone().requires_grad_()
        y = f(x, (8,), w)
        return torch.autograd.grad(y, w, dy.to(y.dtype))[0].double()

    exact = weight_gradient(TF.layer_norm, x.double(), w.double())
    ours = (weight_gradient(NF.layer_norm, x, w) - exact).abs().max()
    torchs = (weight_gradient(TF.layer_norm, x, w) - exact).abs().max()
    assert ours < 1e-3 and torchs > 10 * ours


def test_half_precision_batch_statistics_far_from_zero():
    """Why half-precision BatchNorm and InstanceNorm take the reference path on CPU: at a mean of
    100 torch's CPU kernels round (x - mean) badly, the reference stays within bf16's rounding."""
    x = (torch.randn(16, 64, 8, 16, dtype=torch.float64) + 100).to(torch.bfloat16)
    exact = TF.instance_norm(x.double())
    ours = (NF.instance_norm(x).double() - exact).abs().max()
    torchs = (TF.instance_norm(x).double() - exact).abs().max()
    assert ours < 0.05 < torchs


# ---------------------------------------------------------------------------- empty batches
# torch's two empty-input bugs, listed on the API page: normlib gives what torch gives elsewhere
TORCH_BUGS = {"instance_norm", "group_norm_no_positions"}


EMPTY = {
    "layer_norm": (lambda f, x, w, b: f.layer_norm(x, x.shape[-1:], w, b), (0, 4, 6), 6),
    "rms_norm": (lambda f, x, w, b: f.rms_norm(x, x.shape[-1:], w), (0, 512), 512),
    "group_norm": (lambda f, x, w, b: f.group_norm(x, 2, w, b), (0, 4, 3, 3), 4),
    "group_norm_no_positions": (lambda f, x, w, b: f.group_norm(x, 2, w, b), (2, 4, 0), 4),
    "instance_norm": (lambda f, x, w, b: f.instance_norm(x, weight=w, bias=b), (0, 4, 3, 3), 4),
    "batch_norm_eval": (lambda f, x, w, b: f.batch_norm(x, torch.zeros(4), torch.ones(4), w, b), (0, 4), 4),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", EMPTY)
def test_empty_batches_match_torch(name, dtype):
    """An empty output, an empty input gradient and zero parameter gradients, as torch gives.
    Two torch results are bugs normlib does not copy (listed on the API page): torch's
    InstanceNorm with affine parameters raises an IndexError on an empty batch, and its GroupNorm
    weight gradient over zero positions is NaN (the gradient of an empty sum is 0)."""
    call, shape, c = EMPTY[name]

    def outputs_and_gradients(f):
        x = torch.empty(shape, dtype=dtype, requires_grad=True)
        w = torch.ones(c, dtype=dtype, requires_grad=True)
        b = torch.zeros(c, dtype=dtype, requires_grad=True) if name != "rms_norm" else None
        y = call(f, x, w, b)
        y.sum().backward()
        return [y, x.grad, w.grad] + ([b.grad] if b is not None else [])

    ours = outputs_and_gradients(NF)
    expected = [torch.empty(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)]
    expected += [torch.zeros(c, dtype=dtype)] * (len(ours) - 2)
    if name not in TORCH_BUGS:
        expected = outputs_and_gradients(TF)
    for got, want in zip(ours, expected, strict=True):
        assert got is not None and got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want)  # the empty output and input gradient; zero weight gradients


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 5), (2, 3, 0)])
def test_batch_norm_training_on_an_empty_batch_is_torchs(shape):  # noqa: D103
    """torch returns an empty output and leaves the running statistics alone; so does normlib
    (through the module too, which counts the batch as torch's does)."""
    from normlib import nn

    ours, theirs = nn.BatchNorm1d(3).train(), torch.nn.BatchNorm1d(3).train()
    for module in (ours, theirs):
        module.running_mean.fill_(0.5)
    x = torch.empty(shape, requires_grad=True)
    for module in (ours, theirs):
        y = module(x)
        assert y.shape == x.shape
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    assert ours.num_batches_tracked == theirs.num_batches_tracked == 1
    y = NF.batch_norm(x, None, None, torch.ones(3, requires_grad=True), training=True)
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_reference_layer_handles_empty_batches():
    x = torch.empty(0, 4, 3, 3)
    for out in (reference.layer_norm(x, (3,)), reference.rms_norm(x, (3,)), reference.group_norm(x, 2),
                reference.instance_norm(x), reference.batch_norm(x, None, None, None, None, True),
                reference.local_response_norm(x, 3), reference.l2_normalize(x)):
        assert out.shape == x.shape


def test_still_rejected_where_torch_is_too():
    """One value per channel in training is meaningless (its variance is 0); torch rejects it too."""
    with pytest.raises(ValueError, match="expected more than 1 value per channel"):
        NF.batch_norm(torch.randn(1, 3), None, None, training=True)
    with pytest.raises(ValueError, match="momentum: expected a number in \\[0, 1\\]"):
        NF.batch_norm(torch.randn(4, 3), None, None, training=True, momentum=-0.1)
    with pytest.raises(ValueError, match="eps: expected a positive finite number"):
        NF.group_norm(torch.randn(4, 4, 2), 2, eps=-1e-5)


@pytest.mark.parametrize("name", ["batch_norm", "layer_norm", "rms_norm", "partial_rms_norm", "group_norm",
                                  "instance_norm", "local_response_norm", "adain", "l2_normalize"])
def test_reference_gradcheck_in_float64(name):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.rand(4, dtype=torch.float64, generator=g).add_(0.5).requires_grad_()
    row_w = torch.rand(5, dtype=torch.float64, generator=g).add_(0.5).requires_grad_()
    calls = {
        "batch_norm": (lambda x, w: reference.batch_norm(x, None, None, w, w, True), (x, w)),
        "layer_norm": (lambda x, w: reference.layer_norm(x, (5,), w, w), (x, row_w)),
        "rms_norm": (lambda x, w: reference.rms_norm(x, (5,), w, 1e-6), (x, row_w)),
        "partial_rms_norm": (lambda x, w: reference.partial_rms_norm(x, (5,), 0.4, w, 1e-6), (x, row_w)),
        "group_norm": (lambda x, w: reference.group_norm(x, 2, w, w), (x, w)),
        "instance_norm": (lambda x, w: reference.instance_norm(x, None, None, w, w), (x, w)),
        "local_response_norm": (lambda x: reference.local_response_norm(x, 3, 0.1), (x,)),
        "adain": (lambda x: reference.adain(x, x.flip(0) * 2 + 1), (x,)),
        "l2_normalize": (lambda x: reference.l2_normalize(x, 1), (x,)),
    }
    fn, inputs = calls[name]
    assert torch.autograd.gradcheck(fn, inputs)
