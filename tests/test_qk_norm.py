"""Per-head QK-norm with the rotary embedding (``normlib.functional.qk_norm``): the reference
against a transcription of the models' code in float64, and the kernel (Triton's interpreter on
a CPU, ``tests/conftest.py``) against the reference, read in place from a fused projection."""

import pytest
import torch

from normlib import functional as NF
from normlib import reference

from kernel_device import DEVICE, GPU  # noqa: E402  (Triton, or the interpreter, before the kernels)

from normlib.kernels import qk_norm as kernel  # noqa: E402

TOLERANCES = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=3e-2, rtol=2e-2),
              torch.float16: dict(atol=4e-3, rtol=3e-3)}


def rotary_tables(positions, d, base=10000.0, dtype=torch.float64):
    """cos and sin of shape (T, D/2): position t times frequency base^(-2i/D)."""
    frequencies = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * frequencies
    return angles.cos().to(dtype), angles.sin().to(dtype)


def transcribed(q, weight, eps, cos, sin):
    """The models' own steps (Llama/Qwen3's RMSNorm over the head dimension, then
    ``apply_rotary_pos_emb`` with ``rotate_half`` and cos/sin of shape (T, D) with each
    frequency twice), on (B, T, H, D)."""
    q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + eps) * weight

    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=-1)

    cos, sin = torch.cat([cos, cos], -1)[:, None], torch.cat([sin, sin], -1)[:, None]   # (T, 1, D)
    return q * cos + rotate_half(q) * sin


def test_reference_is_the_models_rms_norm_and_rotary_in_float64():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 7, 3, 16, generator=g, dtype=torch.float64)
    w = torch.rand(16, generator=g, dtype=torch.float64) + 0.5
    cos, sin = rotary_tables(7, 16)
    torch.testing.assert_close(NF.qk_norm(q, w, 1e-6, cos=cos, sin=sin), transcribed(q, w, 1e-6, cos, sin),
                               rtol=1e-14, atol=1e-14)
    # the rotation keeps each head's norm: the RMS after the gain-free norm stays sqrt(1 - eps') ~ 1
    rms = NF.qk_norm(q, None, 1e-12, cos=cos, sin=sin).square().mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms))


def fused_projection(batch, tokens, heads, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(batch, tokens, 3 * heads * d, generator=g) * 2 + 0.3).to(DEVICE, dtype)
    return qkv


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("rms", [True, False], ids=["rms_norm", "layer_norm"])
@pytest.mark.parametrize("rotary", [True, False], ids=["rotary", "no rotary"])
def test_kernel_reads_the_fused_projection_in_place(dtype, rms, rotary):
    batch, tokens, heads, d = 2, 9, 3, 32              # 54 rows: several per program, a ragged end
    qkv = fused_projection(batch, tokens, heads, d, dtype)
    g = torch.Generator().manual_seed(1)
    w = (torch.rand(d, generator=g) + 0.5).to(DEVICE, dtype)
    b = None if rms else torch.randn(d, generator=g).to(DEVICE, dtype)
    cos, sin = (t.to(DEVICE) for t in rotary_tables(tokens, d, dtype=torch.float32)) if rotary else (None, None)
    dy = torch.randn(batch, tokens, heads, d, generator=g).to(DEVICE, dtype)

    def run(projection, f):
        projection = projection.detach().clone().requires_grad_()
        params = [t.detach().clone().requires_grad_() if t is not None else None for t in (w, b)]
        keys = projection.view(batch, tokens, 3, heads, d)[:, :, 1]   # strided: token stride 3HD
        y = f(keys, params[0], bias=params[1], cos=cos, sin=sin, rms=rms)
        y.backward(dy)
        return [y, projection.grad] + [p.grad for p in params if p is not None], keys

    keys = qkv.view(batch, tokens, 3, heads, d)[:, :, 1]
    assert not keys.is_contiguous() and kernel._strides(keys) == (batch * tokens, heads, 3 * heads * d, d)
    eps = 1e-6 if rms else 1e-5
    (ours, _) = run(qkv, lambda x, *a, **k: kernel.qk_norm(x, a[0], eps, k["bias"], k["cos"], k["sin"], k["rms"]))
    (theirs, _) = run(qkv.cpu().double(), lambda x, *a, **k: reference.qk_norm(
        x, a[0].cpu().double(), eps, k["bias"].cpu().double() if k["bias"] is not None else None,
        *(t.cpu() if t is not None else None for t in (k["cos"], k["sin"])), k["rms"]))
    for name, a, e in zip(["y", "dqkv", "dweight", "dbias"], ours, theirs):
        assert a.dtype == dtype, name
        scale = e.abs().max().clamp_min(1).double()
        torch.testing.assert_close(a.cpu().double() / scale, e.double() / scale, **TOLERANCES[dtype],
                                   msg=lambda m, name=name: f"{name}: {m}")
    assert not ours[1].view(batch, tokens, 3, heads, d)[:, :, [0, 2]].any()   # only the keys' slice


def test_kernel_copies_views_it_cannot_read_in_place():
    x = torch.randn(4, 5, 2, 8, device=DEVICE).transpose(0, 1)   # (5, 4, 2, 8): tokens not one axis
    assert kernel._strides(x) is None
    w = torch.rand(8, device=DEVICE)
    torch.testing.assert_close(kernel.qk_norm(x, w, 1e-6), reference.qk_norm(x, w, 1e-6))


def test_kernel_gradcheck_in_float64():
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(2, 3, 3 * 2 * 4, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    w, b = (torch.randn(4, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_() for _ in range(2))
    cos, sin = (t.to(DEVICE) for t in rotary_tables(3, 4))
    for rms in (True, False):
        assert torch.autograd.gradcheck(
            lambda p, w_, b_: kernel.qk_norm(p.view(2, 3, 3, 2, 4)[:, :, 0], w_, None, None if rms else b_,
                                             cos, sin, rms), (qkv, w, b))


def test_custom_ops_pass_opcheck_and_compile():
    x = torch.randn(2, 3, 2, 8, device=DEVICE, requires_grad=True)
    w = torch.rand(8, device=DEVICE, requires_grad=True)
    cos, sin = (t.to(DEVICE) for t in rotary_tables(3, 8, dtype=torch.float32))
    torch.library.opcheck(torch.ops.normlib.qk_norm_forward, (x, w, None, cos, sin, 1e-6, True, 3))
    torch.library.opcheck(torch.ops.normlib.qk_norm_forward, (x, w, w, None, None, 1e-5, False, 1))
    f = lambda x_, w_: kernel.qk_norm(x_, w_, 1e-6, None, cos, sin).square().sum()   # noqa: E731
    loss = torch.compile(f, backend="inductor" if GPU else "aot_eager", fullgraph=True)(x, w)
    for a, e in zip(torch.autograd.grad(loss, (x, w)), torch.autograd.grad(f(x, w), (x, w))):
        torch.testing.assert_close(a, e)


def test_functional_takes_the_kernel_and_the_reference_for_odd_heads(monkeypatch):
    calls = []
    monkeypatch.setattr(NF, "_use_kernels", lambda input: True)
    original = kernel.qk_norm
    monkeypatch.setattr(kernel, "qk_norm", lambda *a, **k: calls.append(a[0].shape[-1]) or original(*a, **k))
    x = torch.randn(2, 3, 2, 8)
    torch.testing.assert_close(NF.qk_norm(x, torch.ones(8)), reference.qk_norm(x, torch.ones(8)))
    NF.qk_norm(torch.randn(2, 3, 2, 7))   # odd head dimension: the reference
    assert calls == [8]


@pytest.mark.parametrize("call, message", [
    (lambda x: NF.qk_norm(x, torch.ones(7)), "weight: expected shape"),
    (lambda x: NF.qk_norm(x, cos=torch.ones(3, 4)), "cos, sin: expected both"),
    (lambda x: NF.qk_norm(x, cos=torch.ones(5, 4), sin=torch.ones(5, 4)), "cos: expected shape"),
    (lambda x: NF.qk_norm(x, bias=torch.ones(8)), "bias: RMSNorm has no shift"),
    (lambda x: NF.qk_norm(x[..., :7], cos=torch.ones(3, 3), sin=torch.ones(3, 3)), "head dimension must be even"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call(torch.randn(2, 3, 2, 8))
