"""The DyT kernel (``normlib.kernels.dyt``) against the reference ``normlib.reference.dyt``: in
Triton's interpreter on a CPU (``tests/conftest.py``), natively on a GPU."""

import pytest
import torch

from normlib import functional as NF
from normlib import reference

from kernel_device import DEVICE, GPU  # noqa: E402  (Triton, or the interpreter, before the kernels)

from normlib.kernels import dyt as kernel  # noqa: E402

# against a float64 reference on the same rounded inputs: outputs within an ulp or two of the
# output dtype, gradients (sums over many elements for the parameters) a little wider
TOLERANCES = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
              torch.float16: dict(atol=3e-3, rtol=3e-3)}


def case(shape, dtype, channels_last, seed=0, affine=True):
    g = torch.Generator().manual_seed(seed)
    channels = shape[-1] if channels_last else shape[1]
    x = (torch.randn(shape, generator=g) * 3).to(DEVICE, dtype)
    alpha = torch.tensor([0.7]).to(DEVICE, dtype)
    w = torch.randn(channels, generator=g).to(DEVICE, dtype) if affine else None
    b = torch.randn(channels, generator=g).to(DEVICE, dtype) if affine else None
    return x, alpha, w, b, torch.randn(shape, generator=g).to(DEVICE, dtype)


def run(f, tensors, dy):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
    y = f(*leaves)
    y.backward(dy)
    return [y] + [t.grad for t in leaves if t is not None]


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("shape, channels_last", [
    ((3, 37, 48), True),          # tokens: 111 rows, several programs, a ragged last tile
    ((2, 1000), True),            # rows longer than a tile's 512 columns, not a power of two
    ((3, 5, 7, 7), False),        # channels-first, 49 positions per row
    ((2, 4, 1200), False),        # channels-first, rows over several column blocks
])
def test_dyt_kernel_matches_the_reference(dtype, shape, channels_last):
    x, alpha, w, b, dy = case(shape, dtype, channels_last)
    ours = run(lambda *t: kernel.dyt(*t, channels_last=channels_last), (x, alpha, w, b), dy)
    theirs = run(lambda *t: reference.dyt(*t, channels_last=channels_last),
                 [t.double().cpu() for t in (x, alpha, w, b)], dy.double().cpu())
    for name, a, e in zip(["y", "dx", "dalpha", "dweight", "dbias"], ours, theirs):
        assert a.dtype == dtype, name
        scale = e.abs().max().clamp_min(1)   # dalpha and the parameter gradients are sums
        torch.testing.assert_close(a.cpu().double() / scale, e / scale, **TOLERANCES[dtype], msg=name)


def test_dyt_kernel_reads_non_contiguous_inputs_and_runs_without_parameters():
    x, alpha, w, b, dy = case((4, 6, 32), torch.float32, True, seed=1)
    strided = x.transpose(0, 1)                    # a non-contiguous view
    torch.testing.assert_close(kernel.dyt(strided, alpha, w, b), reference.dyt(strided, alpha, w, b))
    torch.testing.assert_close(kernel.dyt(x, alpha), torch.tanh(alpha * x))
    ours = run(lambda *t: kernel.dyt(*t), (x, alpha), dy)
    theirs = run(lambda *t: reference.dyt(*t), (x, alpha), dy)
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_tanh_is_accurate_near_zero_and_large():
    # the kernel's tanh: no cancellation near zero (series), no overflow for large |z|
    z = torch.tensor([0.0, 1e-30, -1e-7, 1e-3, 0.2, 0.2499, 0.25, -0.7, 3.0, 40.0, -1e4], dtype=torch.float64)
    for dtype, ulps in ((torch.float64, 4), (torch.float32, 2)):
        got = kernel.dyt(z.to(DEVICE, dtype), torch.ones(1, device=DEVICE, dtype=dtype)).cpu().double()
        exact = torch.tanh(z.to(dtype).double())
        assert ((got - exact).abs() <= ulps * torch.finfo(dtype).eps * exact.abs()).all()


def test_dyt_kernel_gradcheck_in_float64():
    for shape, channels_last in (((2, 3, 5), True), ((2, 3, 4, 2), False)):
        x, alpha, w, b, _ = case(shape, torch.float64, channels_last)
        leaves = [t.requires_grad_() for t in (x, alpha, w, b)]
        assert torch.autograd.gradcheck(lambda *t: kernel.dyt(*t, channels_last=channels_last), leaves)


def test_dyt_custom_ops_pass_opcheck_and_compile():
    x, alpha, w, b, _ = case((3, 16), torch.float32, True)
    leaves = [t.requires_grad_() for t in (x, alpha, w, b)]
    torch.library.opcheck(torch.ops.normlib.dyt_forward, (*leaves, True))
    images = [t.requires_grad_() for t in case((2, 3, 4, 4), torch.float32, False)[:4]]
    torch.library.opcheck(torch.ops.normlib.dyt_forward, (*images, False))
    compiled = torch.compile(lambda *t: kernel.dyt(*t).square().sum(), backend="inductor" if GPU else "aot_eager",
                             fullgraph=True)
    loss = compiled(*leaves)
    for a, e in zip(torch.autograd.grad(loss, leaves), torch.autograd.grad(kernel.dyt(*leaves).square().sum(), leaves)):
        torch.testing.assert_close(a, e)


def test_functional_dyt_takes_the_kernel(monkeypatch):
    calls = []
    monkeypatch.setattr(NF, "_use_kernels", lambda input: True)
    original = kernel.dyt
    monkeypatch.setattr(kernel, "dyt", lambda *a, **k: calls.append(1) or original(*a, **k))
    x, alpha, w, b, _ = case((2, 8), torch.float32, True)
    torch.testing.assert_close(NF.dyt(x, alpha, w, b), reference.dyt(x, alpha, w, b))
    assert calls == [1]
