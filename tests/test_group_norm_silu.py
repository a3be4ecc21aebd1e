"""GroupNorm followed by a diffusion UNet's scale-shift modulation and SiLU, fused
(``normlib.functional.group_norm(..., scale=, shift=, silu=True)``): the reference against the
models' unfused sequence, the kernel (Triton's interpreter on a CPU) against the reference, in
both layouts, with the positions of a group split across programs at batch 1."""

import pytest
import torch
import torch.nn.functional as TF

from normlib import functional as NF
from normlib import reference

from kernel_device import DEVICE, GPU  # noqa: E402  (Triton, or the interpreter, before the kernels)

from normlib.kernels import group_norm as kernel  # noqa: E402

TOLERANCES = {torch.float32: dict(atol=3e-5, rtol=3e-5), torch.bfloat16: dict(atol=3e-2, rtol=2e-2),
              torch.float16: dict(atol=4e-3, rtol=3e-3)}


def unet_sequence(x, groups, w, b, scale, shift):
    """Guided diffusion's ResBlock with use_scale_shift_norm, transcribed:
    ``out_norm(h) * (1 + scale) + shift``, then SiLU."""
    h = TF.group_norm(x, groups, w, b) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    return TF.silu(h)


def test_reference_is_the_unet_sequence_in_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, 5, generator=g, dtype=torch.float64)
    w, b = (torch.randn(8, generator=g, dtype=torch.float64) for _ in range(2))
    scale, shift = (torch.randn(2, 8, generator=g, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(NF.group_norm(x, 4, w, b, scale=scale, shift=shift, silu=True),
                               unet_sequence(x, 4, w, b, scale, shift), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(NF.group_norm(x, 4, w, b, silu=True), TF.silu(TF.group_norm(x, 4, w, b)),
                               rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("batch, modulated", [(2, True), (1, True), (2, False)],
                         ids=["modulated", "batch 1 (sliced)", "silu only"])
def test_kernel_matches_the_reference(dtype, channels_last, batch, modulated):
    g = torch.Generator().manual_seed(1)
    size = 48 if batch == 1 else 6          # batch 1, one group: the positions split over programs
    groups = 1 if batch == 1 else 4
    x = (torch.randn(batch, 8, size, size, generator=g) * 2 + 0.5).to(DEVICE, dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w, b = ((torch.randn(8, generator=g) * 0.5 + 1).to(DEVICE, dtype), torch.randn(8, generator=g).to(DEVICE, dtype))
    scale, shift = ((torch.randn(batch, 8, generator=g) * 0.5).to(DEVICE, dtype) for _ in range(2))
    if not modulated:
        scale = shift = None
    dy = torch.randn(x.shape, generator=g).to(DEVICE, dtype)

    def run(f, tensors):
        leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
        y = f(*leaves)
        y.backward(dy.to(y.device, y.dtype))
        return [y] + [t.grad for t in leaves if t is not None]

    ours = run(lambda *t: kernel.group_norm(t[0], groups, t[1], t[2], 1e-5, t[3], t[4], True), (x, w, b, scale, shift))
    if batch == 1:
        slices, _ = kernel._slices(groups, size * size, kernel._tile(8, size * size)[1], x.device)
        assert slices > 1
    theirs = run(lambda *t: reference.group_norm(t[0], groups, t[1], t[2], 1e-5, scale=t[3], shift=t[4], silu=True),
                 [t.cpu().double() if t is not None else None for t in (x, w, b, scale, shift)])
    for name, a, e in zip(["y", "dx", "dweight", "dbias", "dscale", "dshift"], ours, theirs):
        assert a.dtype == dtype, name
        norm = e.abs().max().clamp_min(1)
        torch.testing.assert_close(a.cpu().double() / norm, e / norm, **TOLERANCES[dtype],
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_kernel_gradcheck_in_float64():
    g = torch.Generator().manual_seed(2)
    leaves = [t.to(DEVICE).requires_grad_() for t in (torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64),
                                                       torch.randn(4, generator=g, dtype=torch.float64),
                                                       torch.randn(4, generator=g, dtype=torch.float64),
                                                       torch.randn(2, 4, generator=g, dtype=torch.float64),
                                                       torch.randn(2, 4, generator=g, dtype=torch.float64))]
    assert torch.autograd.gradcheck(lambda *t: kernel.group_norm(t[0], 2, t[1], t[2], 1e-5, t[3], t[4], True), leaves)
    assert torch.autograd.gradcheck(lambda *t: NF.group_norm(t[0].cpu(), 2, *[u.cpu() for u in t[1:3]],
                                                             scale=t[3].cpu(), shift=t[4].cpu(), silu=True), leaves)


def test_under_torch_compile():
    x = torch.randn(2, 8, 4, 4, device=DEVICE, requires_grad=True)
    scale, shift = (torch.randn(2, 8, device=DEVICE, requires_grad=True) for _ in range(2))
    f = lambda *t: kernel.group_norm(t[0], 4, None, None, 1e-5, t[1], t[2], True).square().sum()   # noqa: E731
    loss = torch.compile(f, backend="inductor" if GPU else "aot_eager", fullgraph=True)(x, scale, shift)
    for a, e in zip(torch.autograd.grad(loss, (x, scale, shift)), torch.autograd.grad(f(x, scale, shift),
                                                                                       (x, scale, shift))):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("kwargs, message", [
    (dict(scale=torch.ones(2, 8)), "scale, shift: expected both"),
    (dict(scale=torch.ones(8), shift=torch.ones(8)), "scale: expected shape"),
    (dict(silu=1), "silu: expected a bool"),
])
def test_bad_input_is_named(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        NF.group_norm(torch.randn(2, 8, 3, 3), 4, **kwargs)


def test_module_takes_the_time_embeddings_scale_and_shift():
    from normlib import nn as NN
    module = NN.GroupNorm(4, 8, silu=True)
    x, scale, shift = torch.randn(2, 8, 3, 3), torch.randn(2, 8), torch.randn(2, 8)
    torch.testing.assert_close(module(x, scale, shift), unet_sequence(x, 4, module.weight, module.bias, scale, shift))
    torch.testing.assert_close(NN.GroupNorm(4, 8)(x), TF.group_norm(x, 4))
    assert "silu=True" in repr(module)
