"""ScaleNorm (Nguyen & Salazar 2019) against a plain transcription of the authors' module, its
relation to RMSNorm, half precision, and the GPT's FixNorm option."""

import pytest
import torch
from torch import nn as tnn

import normlib.functional as NF
from normlib import nn
from normlib.book.models import GPT
from normlib.book.train import seed_everything


class AuthorsScaleNorm(tnn.Module):
    """ScaleNorm as the paper defines it and the authors' code builds it, written out here: one
    learned 0-dimensional scale, the norm clamped from below by eps."""

    def __init__(self, scale, eps=1e-5):
        super().__init__()
        self.scale = tnn.Parameter(torch.tensor(scale))
        self.eps = eps

    def forward(self, x):
        return x * (self.scale / torch.norm(x, dim=-1, keepdim=True).clamp(min=self.eps))


def test_scale_norm_matches_the_authors_module_and_loads_its_state_dict():
    torch.manual_seed(0)
    theirs = AuthorsScaleNorm(8**0.5)
    ours = nn.ScaleNorm(8)
    assert set(ours.state_dict()) == set(theirs.state_dict()) == {"scale"}
    assert ours.scale.shape == () and ours.scale.item() == pytest.approx(8**0.5)
    with torch.no_grad():
        theirs.scale.fill_(1.7)
    ours.load_state_dict(theirs.state_dict())
    x = 3 * torch.randn(2, 5, 8)
    x[0, 0] = 0  # a zero vector: both clamp its norm and return zeros
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)
    theirs.load_state_dict(ours.state_dict())


def test_scale_norm_projects_onto_a_sphere_and_is_rmsnorm_with_one_gain():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 16, dtype=torch.float64) * 5
    g = torch.tensor(2.5, dtype=torch.float64)
    y = NF.scale_norm(x, g)
    torch.testing.assert_close(y.norm(dim=-1), torch.full((4, 6), 2.5, dtype=torch.float64))
    # scale-invariant: a token scaled by a positive constant gives the same output
    torch.testing.assert_close(NF.scale_norm(7 * x, g), y)
    # RMSNorm with every gain equal to g / sqrt(d); eps enters differently, so eps ~ 0 on both
    rms = NF.rms_norm(x, (16,), torch.full((16,), 2.5 / 4, dtype=torch.float64), eps=1e-30)
    torch.testing.assert_close(NF.scale_norm(x, g, eps=1e-30), rms)
    # a fresh ScaleNorm computes a fresh RMSNorm (scale sqrt(d), unit gains), up to eps
    torch.testing.assert_close(nn.ScaleNorm(16).double()(x), nn.RMSNorm(16).double()(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_scale_norm_in_half_precision_computes_in_float32(dtype):
    torch.manual_seed(0)
    x, g = torch.randn(4, 32) * 30, torch.tensor(3.0)
    xs = x.to(dtype).float()
    expected = (g * xs / xs.norm(dim=-1, keepdim=True)).to(dtype)
    out = NF.scale_norm(x.to(dtype), g)
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected, rtol=0, atol=0)  # one rounding, at the end
    assert NF.scale_norm(x.to(dtype), g.to(dtype)).dtype == dtype  # a half-precision scale too


def test_scale_norm_empty_batch_gradient_of_the_scale_and_errors():
    assert NF.scale_norm(torch.randn(0, 3), torch.ones(())).shape == (0, 3)
    layer = nn.ScaleNorm(3).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    layer(x).sum().backward()
    # d/dg of sum g x/||x|| = sum x/||x||
    torch.testing.assert_close(layer.scale.grad, (x / x.norm(dim=-1, keepdim=True)).sum())
    assert "scale_init=1.732" in repr(layer)
    assert nn.ScaleNorm((4,), scale_init=1.0).scale.item() == 1.0
    with pytest.raises(ValueError, match="normalized_shape: expected the number of features"):
        nn.ScaleNorm((4, 2))
    with pytest.raises(ValueError, match="normalized_shape: expected the input to end with"):
        nn.ScaleNorm(4)(torch.randn(2, 3))
    with pytest.raises(ValueError, match="scale_init: expected a number"):
        nn.ScaleNorm(4, scale_init=float("nan"))


def test_gpt_fixnorm_fixes_the_word_vectors_lengths_and_stays_causal():
    seed_everything(0)
    vocab, context, width = 11, 12, 16
    gpt = GPT(vocab, context, width, depth=1, heads=2, positions="rotary", fixnorm=True,
              norm=lambda d: nn.ScaleNorm(d)).eval()
    ids = torch.randint(0, vocab, (3, context))
    x0 = gpt.hidden_states(ids)[0]
    torch.testing.assert_close(x0.norm(dim=-1), torch.full((3, context), width**0.5))
    # a logit is the final ScaleNorm's scale times the cosine with a read-out row
    h = gpt.norm(gpt.hidden_states(ids)[-1])
    rows = gpt.head.weight / gpt.head.weight.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(gpt(ids), h @ rows.T)
    assert gpt(ids).abs().max() <= gpt.norm.scale.item() + 1e-5
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % vocab
    torch.testing.assert_close(gpt(ids)[:, :5], gpt(changed)[:, :5])
    # the state dict is the plain GPT's: FixNorm is a way of using the same tables
    plain = GPT(vocab, context, width, depth=1, heads=2, positions="rotary", norm=lambda d: nn.ScaleNorm(d))
    assert plain.state_dict().keys() == gpt.state_dict().keys()
    with pytest.raises(TypeError, match="fixnorm: expected a bool"):
        GPT(vocab, context, fixnorm=1)
