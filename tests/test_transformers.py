"""The two transformers of the nGPT chapter: the pre-norm GPT with rotary positions and nGPT,
whose invariants (unit-norm matrices, unit-norm hidden states, positive eigen learning rates)
are checked through training."""

import math

import pytest
import torch

import normlib.functional as NF
from normlib import nn
from normlib.book.data import language_model_windows
from normlib.book.models import GPT, NGPT
from normlib.book.models.gpt import max_attention_logits, mlp_output_gradient_norms, rotary
from normlib.book import train
from normlib.book.train import fit, next_token_loss, seed_everything, warmup_cosine

VOCAB, CONTEXT, WIDTH = 11, 12, 16


def toy_task(n=400):
    """A periodic sequence with noise: learnable in a few dozen steps."""
    g = torch.Generator().manual_seed(0)
    ids = (torch.arange(n) * 3 % VOCAB + (torch.rand(n, generator=g) < 0.1).long()) % VOCAB
    return language_model_windows(ids, CONTEXT)


def max_norm_error(model: NGPT) -> float:
    return max((torch.linalg.vector_norm(w, dim=d) - 1).abs().max().item() for w, d in model.matrices_on_sphere())


def test_rotary_keeps_norms_and_depends_on_offsets_only():
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(rotary(x).norm(dim=-1), x.norm(dim=-1))
    q = torch.randn(8, dtype=torch.float64).expand(1, 1, 9, 8)  # the same vector at every position
    k = torch.randn(8, dtype=torch.float64).expand(1, 1, 9, 8)
    scores = rotary(q)[0, 0] @ rotary(k)[0, 0].T
    for offset in range(-3, 4):  # each diagonal (fixed t - s) is constant
        diagonal = torch.diagonal(scores, offset)
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal))
    assert not torch.allclose(torch.diagonal(scores, 0)[0], torch.diagonal(scores, 2)[0])
    with pytest.raises(ValueError, match="even head dimension"):
        rotary(torch.randn(1, 1, 4, 5))


def test_gpt_with_rotary_positions_has_no_position_table_and_stays_causal():
    gpt = GPT(VOCAB, CONTEXT, WIDTH, depth=1, heads=2, positions="rotary").eval()
    assert not any("position" in name for name in gpt.state_dict())
    ids = torch.randint(0, VOCAB, (3, CONTEXT))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % VOCAB
    torch.testing.assert_close(gpt(ids)[:, :6], gpt(changed)[:, :6])
    states = gpt.hidden_states(ids)
    assert len(states) == 2 and torch.equal(gpt.head(gpt.norm(states[-1])), gpt(ids))
    with pytest.raises(ValueError, match="positions: expected 'learned' or 'rotary'"):
        GPT(VOCAB, CONTEXT, positions="sinusoidal")
    with pytest.raises(ValueError, match="ids: expected a \\(N, T\\) tensor of int64"):
        gpt(torch.zeros(2, 3))


def test_ngpt_normalizes_every_matrix_along_the_embedding_dimension():
    model = NGPT(VOCAB, CONTEXT, WIDTH, depth=2, heads=2)
    listed = {id(w) for w, _ in model.matrices_on_sphere()}
    matrices = [name for name, p in model.named_parameters() if p.dim() == 2]
    assert all(id(model.get_parameter(name)) in listed for name in matrices), "a matrix escapes normalization"
    assert len(listed) == len(matrices) == 2 + 5 * 2
    for weight, dim in model.matrices_on_sphere():
        assert weight.shape[dim] == WIDTH
    assert max_norm_error(model) < 1e-6
    # every vector is 1-D and nothing else is normalized: no norm layers, no biases
    assert all(p.dim() in (1, 2) for p in model.parameters())
    assert not any("bias" in name or "norm" in name for name, _ in model.named_parameters())


def test_ngpt_invariants_hold_through_training():
    seed_everything(0)
    model = NGPT(VOCAB, CONTEXT, WIDTH, depth=2, heads=2)
    torch.testing.assert_close(model.eigen_learning_rates(), torch.full((2, 2, WIDTH), 0.05))
    errors_before, errors_after = [], []

    def after_step(m, step):
        errors_before.append(max_norm_error(m))   # Adam has moved the rows off the sphere...
        m.normalize_matrices()
        errors_after.append(max_norm_error(m))    # ...and the projection puts them back

    inputs, targets = toy_task()
    history = fit(model, (inputs, targets), loss_fn=next_token_loss, steps=60, batch_size=8,
                  optimizer=torch.optim.Adam(model.parameters(), lr=1e-2), generator=torch.Generator().manual_seed(0),
                  after_step=after_step, progress=False,
                  evaluate=lambda m: {"val": next_token_loss(m, (inputs, targets)).item()}, eval_every=20)
    assert min(errors_before) > 1e-4 and max(errors_after) < 1e-5
    assert history.values("val")[-1] < 0.7 * history.values("val")[0]   # it learned something
    states = model.hidden_states(inputs)
    for h in states:
        torch.testing.assert_close(h.norm(dim=-1), torch.ones(h.shape[:2]))
    alphas = model.eigen_learning_rates()
    assert (alphas > 0).all() and not torch.allclose(alphas, torch.full_like(alphas, 0.05))
    # logits are scaled cosines: |z_v| <= |s_z,v|
    assert (model(inputs).abs() <= model.s_z().abs() * (1 + 1e-5)).all()


def test_ngpt_eigen_learning_rates_are_positive_step_sizes():
    model = NGPT(VOCAB, CONTEXT, WIDTH, depth=1, heads=2)
    block, h = model.blocks[0], model.hidden_states(torch.randint(0, VOCAB, (2, CONTEXT)))[0]
    before = block(h)
    with torch.no_grad():
        block.alpha_attention.param.neg_()       # a sign flip of the learned vector...
        block.alpha_mlp.param[:3].neg_()
    torch.testing.assert_close(block(h), before)  # ...does not turn a step into a step away
    assert (model.eigen_learning_rates() > 0).all()
    with torch.no_grad():
        block.alpha_attention.param.zero_()       # alpha = 0 skips the attention step
    h_mlp_only = block.mlp(h)
    expected = NF.l2_normalize(h + block.alpha_mlp().abs() * (NF.l2_normalize(h_mlp_only) - h))
    torch.testing.assert_close(block(h), expected)


def test_ngpt_attention_uses_cosine_similarities_and_sqrt_d_temperature():
    model = NGPT(VOCAB, CONTEXT, WIDTH, depth=1, heads=2).double()
    attention = model.blocks[0].attention
    h = model.hidden_states(torch.randint(0, VOCAB, (2, CONTEXT)))[0].double()
    q, k, v = attention.queries_keys_values(h)
    s = attention.s_qk().view(2, 1, -1)
    q, k = q / q.norm(dim=-1, keepdim=True) * s, k / k.norm(dim=-1, keepdim=True) * s
    scores = q @ k.transpose(-1, -2) * math.sqrt(WIDTH // 2)
    scores = scores.masked_fill(torch.ones(CONTEXT, CONTEXT, dtype=torch.bool).triu(1), float("-inf"))
    expected = attention.merge_heads(scores.softmax(-1) @ v)
    torch.testing.assert_close(attention(h), expected)


def test_ngpt_and_gpt_have_about_the_same_size():
    count = lambda m: sum(p.numel() for p in m.parameters())
    ngpt, gpt = NGPT(65, 64, 64, depth=4, heads=4), GPT(65, 64, 64, depth=4, heads=4, positions="rotary")
    assert abs(count(ngpt) / count(gpt) - 1) < 0.05


def test_warmup_cosine_schedule():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    schedule = warmup_cosine(optimizer, steps=100, warmup=10, final_fraction=0.1)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(0.2) and rates[9] == pytest.approx(2.0)
    assert rates[10] == pytest.approx(2.0) and rates[-1] == pytest.approx(0.2, abs=0.01)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    for bad, match in [(dict(steps=0), "steps"), (dict(steps=10, warmup=10), "warmup"),
                       (dict(steps=10, final_fraction=2), "final_fraction")]:
        with pytest.raises(ValueError, match=match):
            warmup_cosine(optimizer, **bad)


def test_fit_records_training_time_without_evaluations(monkeypatch):
    """On a fake clock (so the machine's load cannot matter): each training step takes 1 s and
    each evaluation 100 s; the recorded time is that of the 20 steps alone."""
    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(64, 3), torch.randn(64, 1)
    clock = {"now": 0.0}
    monkeypatch.setattr(train.time, "perf_counter", lambda: clock["now"])

    def step_loss(m, b):
        clock["now"] += 1.0
        return torch.nn.functional.mse_loss(m(b[0]), b[1])

    def slow_evaluate(m):
        clock["now"] += 100.0
        return {"mse": torch.nn.functional.mse_loss(m(x), y).item()}

    history = fit(model, (x, y), loss_fn=step_loss, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  steps=20, batch_size=8, generator=torch.Generator().manual_seed(0), evaluate=slow_evaluate,
                  eval_every=5, progress=False)
    seconds = history.values("seconds")
    assert seconds.tolist() == [0.0, 5.0, 10.0, 15.0, 20.0] and history.seconds == 20.0
    mse = history.values("mse")
    assert history.first_step_at_most("mse", mse[0]) == 0
    assert history.first_step_at_most("mse", mse.min()) == history.steps_of("mse")[mse.argmin()]
    assert history.first_step_at_most("mse", mse.min() - 1) is None


def test_gpt_with_swiglu_has_the_gelu_mlps_parameter_count_and_stays_causal():
    from normlib.book.models.gpt import SwiGLU, swiglu_width

    assert swiglu_width(64) == 176 and swiglu_width(384) == 1024
    gelu = GPT(VOCAB, CONTEXT, 48, depth=1, heads=2, positions="rotary")
    swiglu = GPT(VOCAB, CONTEXT, 48, depth=1, heads=2, positions="rotary", mlp="swiglu")
    assert isinstance(swiglu.blocks[0].mlp, SwiGLU)
    count = lambda m: sum(p.numel() for p in m.blocks[0].mlp.parameters())  # noqa: E731
    assert count(swiglu) == 3 * 48 * 128 and count(gelu) == 2 * 48 * 192  # equal: 18,432
    x = torch.randn(2, 5, 48)
    mlp = swiglu.blocks[0].mlp
    torch.testing.assert_close(mlp(x), mlp.out(mlp.u(x) * torch.nn.functional.silu(mlp.v(x))))
    ids = torch.randint(0, VOCAB, (2, CONTEXT))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % VOCAB
    torch.testing.assert_close(swiglu.eval()(ids)[:, :6], swiglu(changed)[:, :6])
    with pytest.raises(ValueError, match="mlp: expected 'gelu' or 'swiglu'"):
        GPT(VOCAB, CONTEXT, mlp="relu")


def test_weight_decay_groups_decay_matrices_only():
    from normlib.book.train import weight_decay_groups

    model = GPT(VOCAB, CONTEXT, WIDTH, depth=1, heads=2, norm=lambda d: nn.RMSNorm(d))
    decayed, kept = weight_decay_groups(model, 0.1)
    assert decayed["weight_decay"] == 0.1 and kept["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() == 1 for p in kept["params"])
    assert len(decayed["params"]) + len(kept["params"]) == len(list(model.parameters()))
    assert {id(p) for p in kept["params"]} == {id(m.weight) for m in model.modules() if isinstance(m, nn.RMSNorm)}
    with pytest.raises(ValueError, match="weight_decay: expected a number"):
        weight_decay_groups(model, -1.0)


def test_norm_placements_compute_their_formulas_and_stay_causal():
    from normlib.book.models.gpt import PLACEMENTS, deepnorm_constants

    torch.manual_seed(0)
    x = torch.randn(2, 5, WIDTH, dtype=torch.float64)
    for placement in PLACEMENTS:
        model = GPT(VOCAB, CONTEXT, WIDTH, depth=2, heads=2, placement=placement).double().eval()
        block, alpha = model.blocks[0], deepnorm_constants(2)[0] if placement == "deepnorm" else 1.0
        attention, mlp = block.attention, block.mlp
        n1, n2 = block.norm_attention, block.norm_mlp
        if placement == "pre":
            h = x + attention(n1(x))
            expected = h + mlp(n2(h))
        elif placement == "sandwich":
            h = x + block.norm_attention_out(attention(n1(x)))
            expected = h + block.norm_mlp_out(mlp(n2(h)))
        else:  # post, deepnorm
            h = n1(alpha * x + attention(x))
            expected = n2(alpha * h + mlp(h))
        torch.testing.assert_close(block(x), expected)
        assert isinstance(model.norm, torch.nn.Identity) == (placement in ("post", "deepnorm"))
        ids = torch.randint(0, VOCAB, (2, CONTEXT))
        changed = ids.clone()
        changed[:, 6:] = (changed[:, 6:] + 1) % VOCAB
        torch.testing.assert_close(model(ids)[:, :6], model(changed)[:, :6])
    pre = GPT(VOCAB, CONTEXT, WIDTH, depth=1, heads=2)
    assert not any("_out." in key for key in pre.state_dict())  # pre-norm checkpoints unchanged
    with pytest.raises(ValueError, match="placement: expected one of"):
        GPT(VOCAB, CONTEXT, placement="middle")


def test_deepnorm_constants_and_initialization_follow_deepnet():
    from normlib.book.models.gpt import deepnorm_constants

    assert deepnorm_constants(6) == pytest.approx((12**0.25, 48**-0.25))
    torch.manual_seed(0)
    width, depth = 128, 18
    alpha, beta = deepnorm_constants(depth)
    model = GPT(VOCAB, CONTEXT, width, depth=depth, heads=4, placement="deepnorm")
    assert all(block.alpha == alpha for block in model.blocks)
    xavier = (2 / (width + width)) ** 0.5  # a width x width matrix
    qkv = torch.stack([b.attention.qkv.weight for b in model.blocks]).view(depth, 3, width, width)
    out = torch.stack([b.attention.out.weight for b in model.blocks])
    fc = torch.stack([b.mlp[0].weight for b in model.blocks])  # (4 width, width)
    for weights, expected in ((qkv[:, :2], xavier), (qkv[:, 2], beta * xavier), (out, beta * xavier),
                              (fc, beta * (2 / (5 * width)) ** 0.5)):
        assert weights.std().item() == pytest.approx(expected, rel=0.02)
    with pytest.raises(ValueError, match="depth: expected a positive integer"):
        deepnorm_constants(0)


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_mlp_output_gradient_norms_match_autograd_and_leave_grads_alone(mlp):
    seed_everything(0)
    gpt = GPT(VOCAB, CONTEXT, WIDTH, depth=3, heads=2, mlp=mlp, placement="post")
    ids, targets = toy_task()
    ids, targets = ids[:4], targets[:4]
    norms = mlp_output_gradient_norms(gpt, ids, targets)
    assert all(p.grad is None for p in gpt.parameters())
    next_token_loss(gpt, (ids, targets)).backward()
    expected = [block.mlp_out.weight.grad.norm().item() for block in gpt.blocks]
    assert norms == pytest.approx(expected, rel=1e-6) and len(norms) == 3
    assert gpt.blocks[0].mlp_out.out_features == WIDTH


def test_xavier_init_is_the_original_transformers_regime():
    seed_everything(0)
    gpt = GPT(VOCAB, CONTEXT, 64, depth=2, heads=2, init="xavier")
    assert gpt.token.weight.std().item() == pytest.approx(1.0, rel=0.05)
    fan_in, fan_out = gpt.blocks[0].mlp_out.weight.shape[1], gpt.blocks[0].mlp_out.weight.shape[0]
    xavier = math.sqrt(2 / (fan_in + fan_out))
    assert gpt.blocks[0].mlp_out.weight.std().item() == pytest.approx(xavier, rel=0.05)
    # DeepNorm's own initialization overrides the blocks' (the value slice has gain beta)
    deep = GPT(VOCAB, CONTEXT, 64, depth=2, heads=2, init="xavier", placement="deepnorm")
    beta = (8 * 2) ** -0.25
    assert deep.blocks[0].mlp_out.weight.std().item() == pytest.approx(beta * xavier, rel=0.05)
    with pytest.raises(ValueError, match="init: expected 'normal' or 'xavier'"):
        GPT(VOCAB, CONTEXT, init="kaiming")


def test_qk_norm_normalizes_each_heads_queries_and_keys_and_stays_causal():
    seed_everything(0)
    plain = GPT(VOCAB, CONTEXT, WIDTH, depth=1, heads=2, positions="rotary")
    assert not any("q_norm" in name or "k_norm" in name for name in plain.state_dict())
    seed_everything(0)
    # eps ~ 0, so that every normalized row has norm sqrt(head width) to float64 precision
    gpt = GPT(VOCAB, CONTEXT, WIDTH, depth=1, heads=2, positions="rotary",
              qk_norm=lambda d: nn.LayerNorm(d, eps=1e-12, elementwise_affine=False)).eval()
    attention = gpt.blocks[0].attention
    x = torch.randn(3, CONTEXT, WIDTH, dtype=torch.float64)
    attention.double()
    q, k, _ = attention.queries_keys_values(x)
    # rotary keeps each feature pair's norm, so the rows keep LayerNorm's norm sqrt(head width)
    torch.testing.assert_close(q.norm(dim=-1), torch.full(q.shape[:-1], (WIDTH // 2) ** 0.5, dtype=torch.float64))
    torch.testing.assert_close(k.norm(dim=-1), torch.full(k.shape[:-1], (WIDTH // 2) ** 0.5, dtype=torch.float64))
    gpt.float()
    ids = torch.randint(0, VOCAB, (2, CONTEXT))
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % VOCAB
    torch.testing.assert_close(gpt(ids)[:, :5], gpt(changed)[:, :5])


def test_max_attention_logits_by_hand():
    seed_everything(0)
    gpt = GPT(VOCAB, CONTEXT, WIDTH, depth=2, heads=2).eval()
    ids = torch.randint(0, VOCAB, (3, CONTEXT))
    expected = []
    for block, x in zip(gpt.blocks, gpt.hidden_states(ids)):
        q, k, _ = block.attention.queries_keys_values(block.norm_attention(x))
        logits = q @ k.transpose(-2, -1) / (WIDTH // 2) ** 0.5
        causal = torch.ones(CONTEXT, CONTEXT).tril().bool()
        expected.append(logits[..., causal].max().item())
    assert max_attention_logits(gpt, ids) == pytest.approx(expected, rel=1e-5)
    # the logits of the future are masked: softmax of the logits is the attention itself
    logits = gpt.blocks[0].attention.attention_logits(gpt.blocks[0].norm_attention(gpt.hidden_states(ids)[0]))
    assert torch.isinf(logits[..., 0, 1:]).all() and torch.isfinite(logits[..., -1, :]).all()


def test_gpt_with_qknorm_module_is_gpt_with_a_layer_norm_per_head():
    # nn.QKNorm normalizes and rotates in one op, read from the fused projection; the same
    # function as a LayerNorm per head followed by the rotary encoding, and the same state dict
    from normlib import nn as NN
    from normlib.book.models.gpt import GPT
    ids = torch.randint(0, 65, (2, 16), generator=torch.Generator().manual_seed(0))
    outputs, states = [], []
    for qk in (lambda d: NN.LayerNorm(d), lambda d: NN.QKNorm(d, rms=False)):
        torch.manual_seed(0)
        gpt = GPT(vocab_size=65, context=16, width=64, depth=2, heads=4, qk_norm=qk, positions="rotary").double()
        outputs.append(gpt(ids))
        states.append(gpt.state_dict())
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-12, atol=1e-12)
    assert list(states[0]) == list(states[1])
