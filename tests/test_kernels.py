"""The Triton kernels against PyTorch: natively on a GPU, in Triton's interpreter on a CPU.

Without CUDA, ``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` before anything imports Triton,
and the shapes stay small: each interpreted program costs milliseconds.
"""

import pytest
import torch
import torch.nn.functional as TF

from kernel_device import DEVICE, GPU
from tolerances import TOLERANCES

from normlib import functional as NF  # noqa: E402
from normlib import kernels  # noqa: E402
from normlib.kernels import batch_norm as kbn  # noqa: E402
from normlib.kernels import group_norm as kgn  # noqa: E402
from normlib.kernels import rowwise  # noqa: E402
from normlib.kernels._common import INTERPRETER_PROGRAMS  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Gradients against a float64 reference on the same rounded inputs: sums over rows and a few more
# roundings than the outputs (whose tolerances are the shared ones of tests/tolerances.py)
GRAD_TOLERANCES = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=4e-3, rtol=4e-3),
                   torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


def close(actual, expected, dtype, grad=False):
    torch.testing.assert_close(actual.double(), expected.double(), **(GRAD_TOLERANCES if grad else TOLERANCES)[dtype])


def reference_rowwise(x, weight, bias, eps, rms, residual=None):
    """torch's own LayerNorm / RMSNorm in float64, on the same rounded inputs."""
    wide = torch.float64
    summed = (x + residual) if residual is not None else x       # rounded to x's dtype, as the kernel does
    xs = summed.to(wide)
    n = x.shape[-1]
    w = weight.to(wide) if weight is not None else None
    if rms:
        y = TF.rms_norm(xs, (n,), w, eps)
    else:
        y = TF.layer_norm(xs, (n,), w, bias.to(wide) if bias is not None else None, eps)
    return y, summed


def rowwise_case(m, n, dtype, affine=True, offset=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(m, n, generator=g) * 2 + offset).to(DEVICE, dtype)
    w = (torch.rand(n, generator=g) + 0.5).to(DEVICE, dtype) if affine else None
    b = torch.randn(n, generator=g).to(DEVICE, dtype) if affine else None
    dy = torch.randn(m, n, generator=g).to(DEVICE, dtype)
    return x, w, b, dy


def grads(fn, tensors, dy):
    leaves = [t.detach().requires_grad_() if t is not None else None for t in tensors]
    out = fn(*leaves)
    out.backward(dy)
    return out.detach(), [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("rms", [False, True], ids=["layer_norm", "rms_norm"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 7, 1000, 4097])
def test_rowwise_forward_and_backward_match_torch(rms, dtype, n):
    m = 3 if n > 1000 else 37        # 37 rows: several rows per program and an uneven last block
    x, w, b, dy = rowwise_case(m, n, dtype)
    b = None if rms else b
    eps = 1e-5
    kernel = (lambda x_, w_, b_: rowwise.rms_norm(x_, w_, eps)) if rms else (lambda x_, w_, b_: rowwise.layer_norm(x_, w_, b_, eps))

    def reference(x_, w_, b_):
        return reference_rowwise(x_.double(), w_.double(), b_.double() if b_ is not None else None, eps, rms)[0]

    y, (dx, dw, db) = grads(kernel, (x, w, b), dy)
    y_ref, (dx_ref, dw_ref, db_ref) = grads(reference, (x, w, b), dy.double())
    assert y.dtype == dtype and dx.dtype == dtype and dw.dtype == dtype
    close(y, y_ref, dtype)
    close(dx, dx_ref, dtype, grad=True)
    # dweight, dbias: sums over the rows, float32 partial sums in the kernel
    close(dw, dw_ref, dtype, grad=True)
    if not rms:
        close(db, db_ref, dtype, grad=True)


@pytest.mark.parametrize("rms", [False, True], ids=["layer_norm", "rms_norm"])
@pytest.mark.parametrize("paths", ["chunked backward", "chunked both ways"])
@pytest.mark.parametrize("m", [2, 8 * INTERPRETER_PROGRAMS + 3], ids=["2 rows", "many rows per program"])
def test_rowwise_long_rows_take_the_chunked_path(rms, paths, m):
    # rows beyond the backward's fused limit (forward still in registers), then beyond both
    n = rowwise.max_fused_n(torch.float32, backward=paths == "chunked backward") + 1234
    assert n > rowwise.max_fused_n(torch.float32, backward=True)
    assert (n <= rowwise.max_fused_n(torch.float32)) == (paths == "chunked backward")
    x, w, b, dy = rowwise_case(m, n, torch.float32, offset=50.0)
    b = None if rms else b
    kernel = (lambda x_, w_, b_: rowwise.rms_norm(x_, w_, 1e-5)) if rms else (lambda x_, w_, b_: rowwise.layer_norm(x_, w_, b_))
    y, (dx, dw, db) = grads(kernel, (x, w, b), dy)
    y_ref, (dx_ref, dw_ref, db_ref) = grads(lambda *t: reference_rowwise(*t, 1e-5, rms)[0], (x, w, b), dy)
    close(y, y_ref, torch.float32)
    close(dx, dx_ref, torch.float32, grad=True)
    close(dw, dw_ref, torch.float32, grad=True)
    if not rms:
        close(db, db_ref, torch.float32, grad=True)


def test_rowwise_long_rows_without_weight_or_bias():
    n = rowwise.max_fused_n(torch.float32, backward=True) + 100
    x, _, b, dy = rowwise_case(5, n, torch.float32, seed=2)
    for weight, bias in ((None, None), (None, b)):
        leaves = (x, weight, bias)
        _, grads_kernel = grads(lambda *t: rowwise.layer_norm(*t), leaves, dy)
        _, grads_torch = grads(lambda *t: TF.layer_norm(t[0], (n,), t[1], t[2]), leaves, dy)
        for got, expected in zip(grads_kernel, grads_torch):
            if expected is not None:
                close(got, expected, torch.float32, grad=True)


def test_rowwise_weight_gradient_reduces_partial_sums_of_many_programs():
    # more rows than programs: every program accumulates several rows, the buffer has one row per program
    m = 8 * INTERPRETER_PROGRAMS + 3 if not GPU else 100_003
    x, w, b, dy = rowwise_case(m, 64, torch.float32, seed=1)
    _, (_, dw, db) = grads(lambda *t: rowwise.layer_norm(*t), (x, w, b), dy)
    _, (_, dw_ref, db_ref) = grads(lambda *t: TF.layer_norm(t[0], (64,), t[1], t[2]), (x, w, b), dy)
    torch.testing.assert_close(dw, dw_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(db, db_ref, atol=1e-4, rtol=1e-4)


def test_rowwise_edge_cases():
    # one row; a large mean offset (catastrophic cancellation for E[x^2] - E[x]^2); constant rows
    x, w, b, dy = rowwise_case(1, 300, torch.float32, offset=1e4)
    torch.testing.assert_close(rowwise.layer_norm(x, w, b).double(), TF.layer_norm(x.double(), (300,), w.double(), b.double()),
                               atol=1e-4, rtol=1e-4)   # E[x^2] - E[x]^2 would be off by several units here
    constant = torch.full((4, 33), 3.0, device=DEVICE)
    y, (dx,) = grads(lambda t: rowwise.layer_norm(t), (constant,), torch.ones(4, 33, device=DEVICE))
    assert torch.equal(y, torch.zeros_like(y)) and torch.equal(dx, torch.zeros_like(dx))
    # non-contiguous upstream gradient and input
    x, w, b, _ = rowwise_case(16, 40, torch.float32)
    dy = torch.randn(40, 16, device=DEVICE).t()
    x_t = x.t().contiguous().t()
    assert not dy.is_contiguous() and not x_t.is_contiguous()
    _, (dx, dw, _) = grads(lambda *t: rowwise.layer_norm(*t), (x_t, w, b), dy)
    _, (dx_ref, dw_ref, _) = grads(lambda *t: TF.layer_norm(t[0], (40,), t[1], t[2]), (x, w, b), dy)
    close(dx, dx_ref, torch.float32, grad=True)
    close(dw, dw_ref, torch.float32, grad=True)
    # leading dimensions are flattened into rows; zero rows are allowed
    x3 = torch.randn(2, 3, 8, device=DEVICE)
    close(rowwise.rms_norm(x3, eps=1e-6), TF.rms_norm(x3, (8,), eps=1e-6), torch.float32)
    assert rowwise.layer_norm(torch.randn(0, 8, device=DEVICE)).shape == (0, 8)


@pytest.mark.parametrize("rms", [False, True], ids=["layer_norm", "rms_norm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fused_residual_add_returns_the_sum_and_routes_its_gradient(rms, dtype):
    x, w, b, dy = rowwise_case(9, 48, dtype, seed=2)
    residual = rowwise_case(9, 48, dtype, seed=3)[0]
    b = None if rms else b
    dsum = torch.randn(9, 48, device=DEVICE).to(dtype)

    def fused(x_, r_, w_, b_):
        y, s = rowwise.rms_norm(x_, w_, 1e-5, residual=r_) if rms else rowwise.layer_norm(x_, w_, b_, 1e-5, residual=r_)
        return y, s

    def unfused(x_, r_, w_, b_):
        s = x_ + r_
        wide = torch.float64
        y = (TF.rms_norm(s.to(wide), (48,), w_.to(wide), 1e-5) if rms
             else TF.layer_norm(s.to(wide), (48,), w_.to(wide), b_.to(wide), 1e-5))
        return y, s

    results = []
    for fn in (fused, unfused):
        leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, residual, w, b)]
        y, s = fn(*leaves)
        (y.double() * dy.double()).sum().add((s.double() * dsum.double()).sum()).backward()
        results.append((y, s, [t.grad for t in leaves if t is not None]))
    (y, s, g), (y_ref, s_ref, g_ref) = results
    if GPU or dtype == torch.float32:
        assert torch.equal(s, s_ref)   # the same rounded sum that x + residual gives
    else:
        # Triton's interpreter truncates float32 -> bfloat16 (GPUs round to nearest): one ulp apart
        torch.testing.assert_close(s, s_ref, atol=0, rtol=2 ** -7)
    close(y, y_ref, dtype)
    for ours, theirs in zip(g, g_ref):
        close(ours, theirs, dtype, grad=True)


@pytest.mark.parametrize("rms", [False, True], ids=["layer_norm", "rms_norm"])
def test_rowwise_gradcheck_in_float64(rms):
    x = torch.randn(3, 6, dtype=torch.float64, device=DEVICE, requires_grad=True)
    r = torch.randn(3, 6, dtype=torch.float64, device=DEVICE, requires_grad=True)
    w = torch.rand(6, dtype=torch.float64, device=DEVICE, requires_grad=True)
    if rms:
        assert torch.autograd.gradcheck(lambda a, c: rowwise.rms_norm(a, c), (x, w))
        assert torch.autograd.gradcheck(lambda a, b_, c: rowwise.rms_norm(a, c, residual=b_)[0], (x, r, w))
    else:
        assert torch.autograd.gradcheck(lambda a, c: rowwise.layer_norm(a, c, c), (x, w))
        assert torch.autograd.gradcheck(lambda a, b_, c: torch.cat(rowwise.layer_norm(a, c, c, residual=b_)), (x, r, w))


def test_statistics_are_saved_in_float32_for_half_inputs():
    x = torch.randn(4, 64, device=DEVICE, dtype=torch.bfloat16)
    y, _, mean, rstd = torch.ops.normlib.rowwise_norm_forward(
        x, None, None, None, None, None, None, 1e-5, False, 0.0, "fp32", x.dtype, x.dtype, False, 1)
    assert mean.dtype == rstd.dtype == torch.float32 and y.dtype == torch.bfloat16
    torch.testing.assert_close(mean, x.float().mean(1))


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_group_norm_matches_torch(channels_last, dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 8, 5, 7, generator=g) * 3 + 20).to(DEVICE, dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = (torch.rand(8, generator=g) + 0.5).to(DEVICE, dtype)
    b = torch.randn(8, generator=g).to(DEVICE, dtype)
    dy = torch.randn(3, 8, 5, 7, generator=g).to(DEVICE, dtype)
    for groups in (1, 4, 8):
        y, (dx, dw, db) = grads(lambda *t: kgn.group_norm(t[0], groups, t[1], t[2]), (x, w, b), dy)
        y_ref, (dx_ref, dw_ref, db_ref) = grads(lambda *t: TF.group_norm(t[0].double(), groups, t[1].double(), t[2].double()),
                                                (x, w, b), dy.double())
        assert y.dtype == dtype
        assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        close(y, y_ref, dtype)
        close(dx, dx_ref, dtype, grad=True)
        close(dw, dw_ref, dtype, grad=True)
        close(db, db_ref, dtype, grad=True)


def test_group_norm_other_ranks_layouts_and_instance_norm():
    x = torch.randn(2, 6, 10, device=DEVICE) * 2 + 1
    close(kgn.group_norm(x, 6), TF.instance_norm(x), torch.float32)        # G = C is InstanceNorm
    x2 = torch.randn(5, 6, device=DEVICE)
    close(kgn.group_norm(x2, 3), TF.group_norm(x2, 3), torch.float32)      # no spatial axes
    one = torch.randn(4, 1, device=DEVICE, requires_grad=True)              # groups of one element
    y, (dx,) = grads(lambda t: kgn.group_norm(t, 1), (one,), torch.ones(4, 1, device=DEVICE))
    assert torch.equal(y, torch.zeros_like(y)) and torch.equal(dx, torch.zeros_like(dx))
    x5 = torch.randn(2, 4, 3, 3, 3, device=DEVICE).to(memory_format=torch.channels_last_3d)
    close(kgn.group_norm(x5, 2), TF.group_norm(x5, 2), torch.float32)
    permuted = torch.randn(2, 5, 4, 6, device=DEVICE).permute(0, 3, 1, 2)  # neither layout: copied first
    close(kgn.group_norm(permuted, 3), TF.group_norm(permuted, 3), torch.float32)
    # a group larger than one tile (several tiles per group in both passes)
    big = torch.randn(1, 2, 64, 80, device=DEVICE) + 100
    close(kgn.group_norm(big, 1), TF.group_norm(big, 1), torch.float32)
    assert torch.autograd.gradcheck(lambda a, c: kgn.group_norm(a, 2, c, c),
                                    (torch.randn(2, 4, 3, 3, dtype=torch.float64, device=DEVICE, requires_grad=True),
                                     torch.rand(4, dtype=torch.float64, device=DEVICE, requires_grad=True)))


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_group_norm_splits_the_positions_of_few_groups(channels_last):
    # one example, one group: too few programs, so each group's positions are cut into slices whose
    # statistics and gradient sums are merged (several slices in the interpreter's program budget)
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(1, 4, 48, 48, generator=g) * 3 + 20).to(DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w, b = (torch.rand(4, generator=g) + 0.5).to(DEVICE), torch.randn(4, generator=g).to(DEVICE)
    dy = torch.randn(1, 4, 48, 48, generator=g).to(DEVICE)
    block_s = kgn._tile(4, 48 * 48)[1]
    assert kgn._slices(1, 48 * 48, block_s, x.device)[0] > 1
    y, (dx, dw, db) = grads(lambda *t: kgn.group_norm(t[0], 1, t[1], t[2]), (x, w, b), dy)
    y_ref, (dx_ref, dw_ref, db_ref) = grads(lambda *t: TF.group_norm(t[0].double(), 1, t[1].double(), t[2].double()),
                                            (x, w, b), dy.double())
    close(y, y_ref, torch.float32)
    close(dx, dx_ref, torch.float32, grad=True)
    close(dw, dw_ref, torch.float32, grad=True)
    close(db, db_ref, torch.float32, grad=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_batch_norm_training_and_inference_match_torch(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 3, 5, 7, generator=g) * 2 + 30).to(DEVICE, dtype)
    w = (torch.rand(3, generator=g) + 0.5).to(DEVICE, dtype)
    b = torch.randn(3, generator=g).to(DEVICE, dtype)
    dy = torch.randn(6, 3, 5, 7, generator=g).to(DEVICE, dtype)
    y, (dx, dw, db) = grads(lambda *t: kbn.batch_norm_training(*t)[0], (x, w, b), dy)
    y_ref, (dx_ref, dw_ref, db_ref) = grads(lambda *t: TF.batch_norm(t[0].double(), None, None, t[1].double(), t[2].double(),
                                                                     training=True), (x, w, b), dy.double())
    close(y, y_ref, dtype)
    close(dx, dx_ref, dtype, grad=True)
    close(dw, dw_ref, dtype, grad=True)
    close(db, db_ref, dtype, grad=True)
    _, mean, var = kbn.batch_norm_training(x)
    torch.testing.assert_close(mean, x.float().mean((0, 2, 3)))
    torch.testing.assert_close(var, x.float().var((0, 2, 3), correction=0), atol=1e-4, rtol=1e-4)
    running_mean, running_var = torch.randn(3, device=DEVICE), torch.rand(3, device=DEVICE) + 0.5
    y, (dx, dw, db) = grads(lambda *t: kbn.batch_norm_inference(t[0], running_mean, running_var, t[1], t[2]), (x, w, b), dy)
    y_ref, (dx_ref, dw_ref, db_ref) = grads(lambda *t: TF.batch_norm(t[0].double(), running_mean.double(), running_var.double(),
                                                                     t[1].double(), t[2].double()), (x, w, b), dy.double())
    close(y, y_ref, dtype)
    close(dx, dx_ref, dtype, grad=True)
    close(dw, dw_ref, dtype, grad=True)


def test_batch_norm_splits_long_channels_and_handles_other_ranks():
    # more values per channel than one split holds: several splits merged with Chan's formula
    x = torch.randn(40, 2, 30, 30, device=DEVICE) + 1e3
    y, mean, var = kbn.batch_norm_training(x)
    assert kbn._split_count(40 * 900) > 1
    # float32 resolves 6e-5 at 1000: a float32 mean is up to 3e-5 standard deviations off here
    torch.testing.assert_close(y.double(), TF.batch_norm(x.double(), None, None, training=True), atol=1e-4, rtol=1e-5)
    x2 = torch.randn(5, 4, device=DEVICE)
    close(kbn.batch_norm_training(x2)[0], TF.batch_norm(x2, None, None, training=True), torch.float32)
    leaves = (torch.randn(3, 2, 4, dtype=torch.float64, device=DEVICE, requires_grad=True),
              torch.rand(2, dtype=torch.float64, device=DEVICE, requires_grad=True))
    assert torch.autograd.gradcheck(lambda a, c: kbn.batch_norm_training(a, c, c)[0], leaves)
    ones, zeros = torch.ones(2, dtype=torch.float64, device=DEVICE), torch.zeros(2, dtype=torch.float64, device=DEVICE)
    assert torch.autograd.gradcheck(lambda a, c: kbn.batch_norm_inference(a, zeros, ones, c, c), leaves)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 70, 5, 6), (8, 64, 10, 10), (5, 130)],
                         ids=["channels_last, two channel blocks", "channels_last, two splits", "(N, C), three channel blocks"])
def test_batch_norm_reads_channels_last_and_2d_inputs_in_place(dtype, shape):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=g) * 2 + 30).to(DEVICE, dtype)
    if x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    c = shape[1]
    w, b = (torch.rand(c, generator=g) + 0.5).to(DEVICE, dtype), torch.randn(c, generator=g).to(DEVICE, dtype)
    dy = torch.randn(shape, generator=g).to(DEVICE, dtype)
    a, _, positions = kbn._view(kbn._layout(x))
    assert positions == 1 and a == x.numel() // c          # read in place, channels contiguous
    grid = kbn._launch(x)[0]
    assert grid[0] == triton_cdiv(c, kbn.MAX_CHANNELS) and (grid[1] > 1) == (shape == (8, 64, 10, 10))
    y, (dx, dw, db) = grads(lambda *t: kbn.batch_norm_training(*t)[0], (x, w, b), dy)
    y_ref, (dx_ref, dw_ref, db_ref) = grads(lambda *t: TF.batch_norm(t[0].double(), None, None, t[1].double(),
                                                                     t[2].double(), training=True), (x, w, b), dy.double())
    if x.dim() == 4:
        assert y.is_contiguous(memory_format=torch.channels_last) and dx.is_contiguous(memory_format=torch.channels_last)
    close(y, y_ref, dtype)
    close(dx, dx_ref, dtype, grad=True)
    close(dw, dw_ref, dtype, grad=True)
    close(db, db_ref, dtype, grad=True)
    running_mean, running_var = torch.randn(c, device=DEVICE) + 30, torch.rand(c, device=DEVICE) + 0.5
    y = kbn.batch_norm_inference(x, running_mean, running_var, w, b)
    if x.dim() == 4:
        assert y.is_contiguous(memory_format=torch.channels_last)
    close(y, TF.batch_norm(x.double(), running_mean.double(), running_var.double(), w.double(), b.double()), dtype)


def triton_cdiv(a, b):
    return -(-a // b)


def test_functional_dispatch_reaches_the_kernels(monkeypatch):
    # normlib.functional sends CUDA tensors to the kernels; here the dispatch is forced (CPU tensors
    # run in the interpreter, and torch's native CPU path is switched off), so the same code path is
    # checked without a GPU
    monkeypatch.setattr(NF, "_use_kernels", lambda input: True)
    monkeypatch.setattr(NF, "_native_cpu", lambda *args, **kwargs: False)
    calls = []
    for module, name in [(rowwise, "layer_norm"), (rowwise, "rms_norm"), (kgn, "group_norm"),
                         (kbn, "batch_norm_training"), (kbn, "batch_norm_inference")]:
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    x = torch.randn(4, 6, 3, 5, device=DEVICE)
    w, b = torch.rand(6, device=DEVICE) + 0.5, torch.randn(6, device=DEVICE)
    close(NF.layer_norm(x, (3, 5)), TF.layer_norm(x, (3, 5)), torch.float32)
    weight_5 = torch.rand(5, device=DEVICE)
    close(NF.rms_norm(x, (5,), weight_5, eps=1e-6), TF.rms_norm(x, (5,), weight_5, 1e-6), torch.float32)
    close(NF.rms_norm(x, (3, 5), eps=1e-6), TF.rms_norm(x, (3, 5), None, 1e-6), torch.float32)
    close(NF.group_norm(x, 3, w, b), TF.group_norm(x, 3, w, b), torch.float32)
    close(NF.instance_norm(x, weight=w, bias=b), TF.instance_norm(x, weight=w, bias=b), torch.float32)
    ours_mean, ours_var = torch.zeros(6, device=DEVICE), torch.ones(6, device=DEVICE)
    theirs_mean, theirs_var = ours_mean.clone(), ours_var.clone()
    close(NF.batch_norm(x, ours_mean, ours_var, w, b, training=True, momentum=0.3),
          TF.batch_norm(x, theirs_mean, theirs_var, w, b, training=True, momentum=0.3), torch.float32)
    torch.testing.assert_close(ours_mean, theirs_mean)
    torch.testing.assert_close(ours_var, theirs_var)     # unbiased variance, torch's momentum
    close(NF.batch_norm(x, ours_mean, ours_var, w, b), TF.batch_norm(x, theirs_mean, theirs_var, w, b), torch.float32)
    assert calls == ["layer_norm", "rms_norm", "rms_norm", "group_norm", "group_norm", "batch_norm_training",
                     "batch_norm_inference"]


def test_custom_ops_pass_torch_library_opcheck():
    # schema, fake (meta) implementation, autograd registration: what torch.compile relies on
    x = torch.randn(5, 16, device=DEVICE, requires_grad=True)
    w = torch.rand(16, device=DEVICE, requires_grad=True)
    f32, b16 = torch.float32, torch.bfloat16
    gate, scale, shift = (torch.rand(1, 16, device=DEVICE, requires_grad=True) for _ in range(3))   # 5 rows each
    for args in ((x, None, w, w, None, None, None, 1e-5, False, 0.0, "fp32", f32, f32, False, 1),
                 (x, x.detach().clone(), w, None, None, None, None, 1e-5, True, 0.0, "fp32", f32, f32, False, 1),
                 # the options: offset gain, Llama's casting, another output dtype, memory-light backward
                 (x, None, w, w, None, None, None, 1e-5, False, 1.0, "llama", b16, f32, True, 1),
                 (x.to(b16), x.detach().clone(), w, None, None, None, None, 1e-5, True, 1.0, "none", b16, f32, True, 1),
                 # adaLN-Zero: the gated residual add and the modulation
                 (x, x.detach().clone(), w, w, gate, scale, shift, 1e-5, False, 0.0,
                  "fp32", f32, f32, False, 5)):
        torch.library.opcheck(torch.ops.normlib.rowwise_norm_forward, args)
    images = torch.randn(2, 4, 3, 3, device=DEVICE, requires_grad=True)
    c = torch.rand(4, device=DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.normlib.group_norm_forward, (images, c, c, 2, 1e-5, None, None, False))
    per_example = [torch.rand(2, 4, device=DEVICE, requires_grad=True) for _ in range(2)]   # a UNet's time embedding
    torch.library.opcheck(torch.ops.normlib.group_norm_forward, (images, c, c, 2, 1e-5, *per_example, True))
    torch.library.opcheck(torch.ops.normlib.batch_norm_training_forward, (images, c, c, 1e-5))
    torch.library.opcheck(torch.ops.normlib.channel_affine, (images, c.detach().clone().requires_grad_(), c, c))


def test_kernels_work_under_torch_compile():
    # aot_eager traces through the fake implementations and the registered backward; on a GPU the
    # default inductor backend compiles the graph around the custom ops
    backend = "inductor" if GPU else "aot_eager"
    x = torch.randn(6, 32, device=DEVICE, requires_grad=True)
    w = torch.rand(32, device=DEVICE, requires_grad=True)

    def block(x_, w_):
        y, s = rowwise.rms_norm(x_ * 2, w_, 1e-6, residual=x_)
        return (y * s).sum()

    compiled = torch.compile(block, backend=backend, fullgraph=True)
    loss = compiled(x, w)
    grads_compiled = torch.autograd.grad(loss, (x, w))
    grads_eager = torch.autograd.grad(block(x, w), (x, w))
    torch.testing.assert_close(loss, block(x, w))
    for a, b in zip(grads_compiled, grads_eager):
        torch.testing.assert_close(a, b)


def test_bad_input_is_refused_with_the_argument_named():
    x = torch.randn(4, 8, device=DEVICE)
    with pytest.raises(TypeError, match="input: expected a floating-point tensor"):
        rowwise.layer_norm(x.long())
    with pytest.raises(ValueError, match="weight: expected shape"):
        rowwise.layer_norm(x, torch.ones(7, device=DEVICE))
    with pytest.raises(ValueError, match="residual"):
        rowwise.rms_norm(x, residual=x[:2])
    with pytest.raises(ValueError, match="num_groups"):
        kgn.group_norm(torch.randn(2, 6, 4, device=DEVICE), 4)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        kbn.batch_norm_training(torch.randn(1, 3, device=DEVICE))
    if not GPU:
        assert kernels.backend().startswith(("reference", "interpreter"))
        assert not kernels.available()


def test_backend_names_the_path(monkeypatch):
    """The choice is made once per process; cache_clear() makes it again from the environment."""
    def decide():
        kernels.backend.cache_clear()
        return kernels.backend()
    first = kernels.backend()
    monkeypatch.setenv("NORMLIB_DISABLE_KERNELS", "1")
    assert kernels.backend() == first  # cached: not re-read on every call
    assert decide() == "reference: NORMLIB_DISABLE_KERNELS=1" and not kernels.available()
    monkeypatch.delenv("NORMLIB_DISABLE_KERNELS")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert decide() == "interpreter"
    monkeypatch.delenv("TRITON_INTERPRET")
    assert decide() == ("triton" if GPU else "reference: no CUDA device")
    monkeypatch.undo()
    assert decide() == first


def test_persistent_grid_is_what_the_gpu_holds_at_once(monkeypatch):
    # the GPU branch, with the compiled kernel and the device faked: 132 SMs; 109 registers on 16
    # warps fit once per SM (the bfloat16 backward at N = 8192), 40 registers on 8 warps six times
    from types import SimpleNamespace

    from normlib.kernels import _common

    class Compiled:
        def __init__(self, registers, warps):
            self.n_regs, self.metadata = registers, SimpleNamespace(num_warps=warps, shared=64)

        def _init_handles(self):
            pass

    class Kernel:
        def __init__(self, registers, warps):
            self.compiled, self.warmups = Compiled(registers, warps), 0

        def warmup(self, *args, grid, **options):
            self.warmups += 1
            return self.compiled

    monkeypatch.setattr(_common, "_multiprocessors", lambda index: 132)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    cuda = torch.device("cuda", 0)
    big, small = Kernel(109, 16), Kernel(40, 8)
    assert _common.persistent_programs(big, (), dict(num_warps=16), cuda, rows=100_000) == 132
    assert _common.persistent_programs(small, (), dict(num_warps=8), cuda, rows=100_000) == 6 * 132
    assert _common.persistent_programs(small, (), dict(num_warps=8), cuda, rows=80) == 10   # 8 rows each at least
    assert small.warmups == 1                                                                 # compiled once, then cached
    assert _common.persistent_programs(small, (), {}, torch.device("cpu"), rows=80) == INTERPRETER_PROGRAMS
