"""The training loop, the MLP, the quadratic model, ghost BN and inference mixing,
and the hand-derived backward passes."""

import numpy as np
import pytest
import torch

import normlib.functional as NF
from normlib import nn
from normlib.book import backward, quadratic
from normlib.book.models import MLP, ShiftingNoise, SmallCNN
from normlib.book.train import History, accuracy, fit, learning_rate_sensitivity, minibatches, seed_everything


def test_hand_derived_batch_norm_backward_matches_autograd():
    x = torch.randn(6, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(6, 3, 4, 2, dtype=torch.float64)
    NF.batch_norm(x, None, None, w, b, training=True).backward(dy)
    dx, dw, db = backward.batch_norm_backward(dy, x.detach(), w.detach())
    for ours, theirs in ((dx, x.grad), (dw, w.grad), (db, b.grad)):
        torch.testing.assert_close(ours, theirs)


def test_hand_derived_layer_norm_backward_matches_autograd():
    x = torch.randn(5, 4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(5, 4, 6, dtype=torch.float64)
    NF.layer_norm(x, (6,), w, b).backward(dy)
    dx, dw, db = backward.layer_norm_backward(dy, x.detach(), (6,), w.detach())
    for ours, theirs in ((dx, x.grad), (dw, w.grad), (db, b.grad)):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("groups, weighted", [(1, True), (2, True), (6, True), (3, False)])
def test_hand_derived_group_norm_backward_matches_autograd(groups, weighted):
    x = (torch.randn(4, 6, 3, 5, dtype=torch.float64) * 3 + 2).requires_grad_()
    w = torch.randn(6, dtype=torch.float64, requires_grad=True) if weighted else None
    b = torch.randn(6, dtype=torch.float64, requires_grad=True) if weighted else None
    dy = torch.randn(4, 6, 3, 5, dtype=torch.float64)
    NF.group_norm(x, groups, w, b).backward(dy)
    dx, dw, db = backward.group_norm_backward(dy, x.detach(), groups, w.detach() if weighted else None)
    torch.testing.assert_close(dx, x.grad)
    if weighted:
        torch.testing.assert_close(dw, w.grad)
        torch.testing.assert_close(db, b.grad)
    else:
        assert dw is None and db is None
    # each group's gradient has no component along the group's shift
    assert dx.reshape(4, groups, -1).sum(-1).abs().max() < 1e-10


def test_group_norm_backward_rejects_bad_groups():
    with pytest.raises(ValueError, match="num_groups"):
        backward.group_norm_backward(torch.randn(2, 6, 4), torch.randn(2, 6, 4), 4)


@pytest.mark.parametrize("conv_norm, fc_norm", [
    (None, None),
    (nn.BatchNorm2d, nn.BatchNorm1d),
    (lambda c: nn.GroupNorm(4, c), lambda c: nn.GroupNorm(4, c)),
    (lambda c: nn.InstanceNorm2d(c, affine=True), None),
])
def test_small_cnn_shapes_and_biases(conv_norm, fc_norm):
    model = SmallCNN(conv_norm, fc_norm, widths=(4, 8), hidden=8)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all((c.bias is None) == (conv_norm is not None) for c in convs)
    assert (model.hidden[0].bias is None) == (fc_norm is not None)
    # 16x16 inputs give one position after the second stage
    assert SmallCNN(widths=(2, 3), hidden=4, image_size=16)(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_small_cnn_rejects_bad_input():
    with pytest.raises(ValueError, match="image_size"):
        SmallCNN(image_size=12)
    with pytest.raises(ValueError, match="images"):
        SmallCNN()(torch.randn(2, 28, 28))


def test_small_cnn_batch_norm_at_batch_two_maps_the_hidden_layer_to_two_values():
    # the mechanism the group-norm chapter measures: BN over 2 values outputs +-d / sqrt(d^2 + eps)
    # (d half their difference), so each hidden feature carries one bit: which example is larger
    torch.manual_seed(0)
    model = SmallCNN(nn.BatchNorm2d, nn.BatchNorm1d, widths=(4, 8), hidden=16)
    pre = model.hidden[0](model.features(torch.rand(2, 1, 28, 28)))
    normalized = model.hidden[1](pre)
    half_difference = (pre[0] - pre[1]) / 2
    torch.testing.assert_close(normalized[0], half_difference / torch.sqrt(half_difference**2 + 1e-5))
    torch.testing.assert_close(normalized[1], -normalized[0])


def test_ghost_batch_norm_normalizes_each_ghost_batch():
    x = torch.randn(12, 3) * 3 + 2
    rm, rv = torch.zeros(3), torch.ones(3)
    out = NF.ghost_batch_norm(x, 4, rm, rv, training=True, momentum=1.0)
    for chunk_in, chunk_out in zip(x.split(4), out.split(4)):
        torch.testing.assert_close(chunk_out, NF.batch_norm(chunk_in, None, None, training=True))
    chunks = x.split(4)
    torch.testing.assert_close(rm, torch.stack([c.mean(0) for c in chunks]).mean(0))
    torch.testing.assert_close(rv, torch.stack([c.var(0) for c in chunks]).mean(0))
    # ghost batch as large as the batch: plain batch norm
    torch.testing.assert_close(NF.ghost_batch_norm(x, 12, None, None, training=True),
                               NF.batch_norm(x, None, None, training=True))
    torch.autograd.gradcheck(lambda t: NF.ghost_batch_norm(t, 3, None, None, training=True),
                             torch.randn(9, 2, dtype=torch.float64, requires_grad=True))


def test_mixed_batch_norm_interpolates_between_population_and_batch():
    x = torch.randn(8, 4, 3) + 1
    rm, rv = torch.randn(4), torch.rand(4) + 0.5
    torch.testing.assert_close(NF.mixed_batch_norm(x, rm, rv, 0.0), NF.batch_norm(x, rm, rv))
    torch.testing.assert_close(NF.mixed_batch_norm(x, rm, rv, 1.0), NF.batch_norm(x, None, None, training=True))
    # the mixed variance is the variance of the mixture of the two distributions
    alpha = 0.3
    var_b, mean_b = torch.var_mean(x, dim=(0, 2), correction=0)
    second_moment = alpha * (var_b + mean_b**2) + (1 - alpha) * (rv + rm**2)
    mean = alpha * mean_b + (1 - alpha) * rm
    expected = NF.batch_norm(x, mean, second_moment - mean**2)
    torch.testing.assert_close(NF.mixed_batch_norm(x, rm, rv, alpha), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="alpha: expected a number in"):
        NF.mixed_batch_norm(x, rm, rv, 1.5)
    torch.autograd.gradcheck(lambda t: NF.mixed_batch_norm(t, rm.double(), rv.double(), 0.4),
                             torch.randn(5, 4, dtype=torch.float64, requires_grad=True))


def test_batch_group_norm_pools_groups_of_channels_over_the_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 3, 2, generator=g) * 3 + 2
    w, b = torch.randn(6, generator=g), torch.randn(6, generator=g)
    # its statistics, written out: per group of 2 channels, over examples, channels and positions
    groups = x.reshape(4, 3, 2, 3, 2)
    var, mean = torch.var_mean(groups, dim=(0, 2, 3, 4), keepdim=True, correction=0)
    expected = ((groups - mean) / torch.sqrt(var + 1e-5)).reshape(x.shape) * w.view(6, 1, 1) + b.view(6, 1, 1)
    rm, rv = torch.zeros(3), torch.ones(3)
    torch.testing.assert_close(NF.batch_group_norm(x, 3, rm, rv, w, b, training=True, momentum=1.0), expected)
    torch.testing.assert_close(rm, mean.flatten())
    torch.testing.assert_close(rv, groups.var(dim=(0, 2, 3, 4)))  # unbiased, as batch_norm stores it
    # one group per channel is batch norm, running statistics included; one example is group norm
    rm_bn, rv_bn, rm_bgn, rv_bgn = torch.zeros(6), torch.ones(6), torch.zeros(6), torch.ones(6)
    torch.testing.assert_close(NF.batch_group_norm(x, 6, rm_bgn, rv_bgn, w, b, training=True),
                               NF.batch_norm(x, rm_bn, rv_bn, w, b, training=True))
    torch.testing.assert_close((rm_bgn, rv_bgn), (rm_bn, rv_bn))
    torch.testing.assert_close(NF.batch_group_norm(x[:1], 3, None, None, w, b, training=True),
                               NF.group_norm(x[:1], 3, w, b))
    # evaluation mode: the running statistics of each group, broadcast to its channels
    out = NF.batch_group_norm(x, 3, rm, rv, training=False)
    torch.testing.assert_close(out, (x - rm.repeat_interleave(2).view(6, 1, 1))
                               / torch.sqrt(rv.repeat_interleave(2).view(6, 1, 1) + 1e-5))
    assert NF.batch_group_norm(torch.zeros(0, 6, 2), 3, None, None, training=True).shape == (0, 6, 2)
    half = NF.batch_group_norm(x.bfloat16(), 3, None, None, w, b, training=True)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), expected, atol=0.1, rtol=0.02)  # bf16 output rounding
    x64 = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    w64, b64 = (torch.randn(4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda t, w, b: NF.batch_group_norm(t, 2, None, None, w, b, training=True),
                                    (x64, w64, b64))
    with pytest.raises(ValueError, match="num_groups: expected a divisor of the number of channels 6, got 4"):
        NF.batch_group_norm(x, 4, None, None, training=True)


def test_batch_group_norm_module_is_batch_norm_with_one_group_per_channel():
    x = torch.randn(5, 4, 3)
    ours, bn = nn.BatchGroupNorm(4, 4), torch.nn.BatchNorm1d(4)
    torch.testing.assert_close(ours(x), bn(x))
    assert ours.state_dict().keys() == bn.state_dict().keys()
    torch.testing.assert_close(ours.running_var, bn.running_var)
    ours.eval(), bn.eval()
    torch.testing.assert_close(ours(x), bn(x))
    grouped = nn.BatchGroupNorm(2, 4)
    assert grouped.running_mean.shape == (2,) and grouped.weight.shape == (4,)
    with pytest.raises(ValueError, match="num_groups: expected a divisor of num_channels=4, got 3"):
        nn.BatchGroupNorm(3, 4)
    with pytest.raises(ValueError, match="input: expected 4 channels"):
        grouped(torch.randn(2, 3))


def test_batch_norm_module_extensions():
    bn = nn.BatchNorm1d(3, ghost_batch_size=2)
    x = torch.randn(6, 3)
    torch.testing.assert_close(bn(x), NF.ghost_batch_norm(x, 2, None, None, training=True))
    bn.eval()
    bn.inference_alpha = 0.5
    torch.testing.assert_close(bn(x), NF.mixed_batch_norm(x, bn.running_mean, bn.running_var, 0.5))
    with pytest.raises(ValueError, match="ghost_batch_size: expected a positive integer"):
        nn.BatchNorm1d(3, ghost_batch_size=0)


def test_shifting_noise_moves_each_feature_at_every_step_in_training_only():
    noise = ShiftingNoise(max_shift=1.0, scale_range=(0.5, 2.0))
    x = torch.randn(64, 5, 3)
    torch.manual_seed(0)
    y = noise(x)
    torch.manual_seed(0)  # the same draws: scale, then shift, per feature
    scale = torch.empty(1, 5, 1).uniform_(0.5, 2.0)
    shift = torch.empty(1, 5, 1).uniform_(-1.0, 1.0)
    torch.testing.assert_close(y, scale * x + shift)
    assert ((scale >= 0.5) & (scale <= 2.0)).all() and (shift.abs() <= 1.0).all()
    assert not torch.equal(noise(x), noise(x))  # drawn anew at every forward pass
    assert torch.equal(noise.eval()(x), x)
    # gradients flow through the affine map
    x64 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    noise.train()(x64).sum().backward()
    assert ((x64.grad >= 0.5) & (x64.grad <= 2.0)).all()
    for kwargs, match in [({"max_shift": -1.0}, "max_shift"), ({"scale_range": (0.0, 1.0)}, r"scale_range\[0\]"),
                          ({"scale_range": (2.0, 1.0)}, r"scale_range\[1\]"), ({"scale_range": 1.0}, "scale_range")]:
        with pytest.raises(ValueError, match=match):
            ShiftingNoise(**kwargs)
    with pytest.raises(ValueError, match="input: expected at least 2 dimensions"):
        noise(torch.randn(3))


def test_gradient_descent_threshold_is_two_over_lambda_max():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)) * np.array([1.0, 5.0, 0.2]) + np.array([0.0, 3.0, 0.0])
    y = X @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=200)
    lam = np.linalg.eigvalsh(quadratic.hessian(X))
    predicted = 2 / lam[-1]
    assert quadratic.gradient_descent(X, y, 0.98 * predicted, 500)[-1] < quadratic.gradient_descent(X, y, 0.98 * predicted, 500)[0]
    assert not np.isfinite(quadratic.gradient_descent(X, y, 1.1 * predicted, 3000)[-1]) or \
        quadratic.gradient_descent(X, y, 1.1 * predicted, 3000)[-1] > 1e10
    observed = quadratic.divergence_threshold(X, y, steps=2000)
    assert abs(observed / predicted - 1) < 0.02
    assert quadratic.steps_to_reach([5, 3, 1, 0.5], 1.0) == 2
    assert quadratic.steps_to_reach([5, 3], 1.0) is None


def test_gradient_descent_path_follows_the_update_rule():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 2)) + 3.0
    y = X @ np.array([1.0, -1.0])
    losses, weights = quadratic.gradient_descent(X, y, 0.01, 5, return_weights=True)
    assert weights.shape == (6, 2) and np.array_equal(weights[0], [0.0, 0.0])
    for t in range(5):  # w_{t+1} = w_t - lr * X^T (X w_t - y) / n, and the loss at w_t
        w = weights[t]
        np.testing.assert_allclose(weights[t + 1], w - 0.01 * X.T @ (X @ w - y) / 50)
        np.testing.assert_allclose(losses[t], np.sum((X @ w - y) ** 2) / 100)
    np.testing.assert_array_equal(losses, quadratic.gradient_descent(X, y, 0.01, 5))
    with pytest.raises(ValueError, match=r"w0: expected shape \(2,\)"):
        quadratic.gradient_descent(X, y, 0.01, 5, w0=[0.0])


def test_fit_trains_an_mlp_and_records_history():
    g = seed_everything(0)
    x = torch.randn(256, 10)
    y = (x[:, 0] > 0).long()
    model = MLP([10, 16, 2], activation="relu", norm=nn.BatchNorm1d)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    history = fit(model, (x, y), loss_fn=lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
                  optimizer=opt, steps=60, batch_size=32, generator=g, progress=False,
                  evaluate=lambda m: {"acc": accuracy(m, x, y)}, eval_every=20)
    assert list(history.steps_of("acc")) == [0, 20, 40, 60]
    assert history.last("acc") > 0.9 and not history.diverged
    logits, pre = model(x, return_preactivations=True)
    assert logits.shape == (256, 2) and pre[0].shape == (256, 16)


def test_history_mean_from_averages_the_late_records():
    history = History()
    for step, modes in [(0, 0), (250, 8), (500, 2), (750, 4)]:
        history.log(step, modes=modes)
    assert history.mean_from("modes", 500) == 3.0
    assert history.mean_from("modes", 251) == 3.0  # from the first record at or after the step
    assert history.mean_from("modes", 0) == 3.5
    with pytest.raises(ValueError, match="step"):
        history.mean_from("modes", 751)


def test_history_running_mean_smooths_over_a_window():
    history = History()
    for step, value in enumerate([1.0, 3.0, 5.0, 7.0]):
        history.log(step + 1, loss=value)
    steps, means = history.running_mean("loss", window=2)
    assert steps.tolist() == [2, 3, 4] and means.tolist() == [2.0, 4.0, 6.0]
    assert history.running_mean("loss", window=5)[1].size == 0
    with pytest.raises(ValueError, match="window"):
        history.running_mean("loss", window=0)


def test_fit_stops_when_the_loss_diverges():
    g = seed_everything(0)
    x, y = torch.randn(64, 4), torch.randn(64)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e6)
    history = fit(model, (x, y), loss_fn=lambda m, b: ((m(b[0]).squeeze(1) - b[1]) ** 2).mean(),
                  optimizer=opt, steps=200, batch_size=64, generator=g, progress=False)
    assert history.diverged and history.steps < 200


def test_fit_calls_before_step_between_backward_and_the_optimizer_step():
    g = seed_everything(0)
    x, y = torch.randn(64, 4), torch.randn(64)
    model = torch.nn.Linear(4, 1)
    start = model.weight.detach().clone()
    seen = []

    def before_step(m, step):  # the gradient exists and the weights have not moved yet
        seen.append((step, m.weight.grad is not None, torch.equal(m.weight.detach(), start)))
        m.weight.grad.zero_()

    fit(model, (x, y), loss_fn=lambda m, b: ((m(b[0]).squeeze(1) - b[1]) ** 2).mean(),
        optimizer=torch.optim.SGD([model.weight], lr=0.1), steps=3, batch_size=16, generator=g,
        before_step=before_step, progress=False)
    assert seen == [(1, True, True), (2, True, True), (3, True, True)]
    assert torch.equal(model.weight.detach(), start)  # every gradient was zeroed before its step


def test_minibatches_cover_the_data_each_epoch():
    data = (torch.arange(10),)
    batches = minibatches(data, 5, torch.Generator().manual_seed(0))
    seen = torch.cat([next(batches)[0] for _ in range(2)])
    assert sorted(seen.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        next(minibatches(data, 11, torch.Generator()))


def test_partial_rms_norm():
    x = torch.randn(4, 16, dtype=torch.float64)
    torch.testing.assert_close(NF.partial_rms_norm(x, (16,), 1.0, eps=1e-6), NF.rms_norm(x, (16,), eps=1e-6))
    k = 4  # p = 0.25 of 16 features
    expected = x / torch.sqrt(x[:, :k].square().mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(NF.partial_rms_norm(x, (16,), 0.25, eps=1e-6), expected)
    torch.testing.assert_close(NF.partial_rms_norm(x, (16,), 0.2, eps=1e-6), expected)  # ceil(3.2) = 4
    torch.autograd.gradcheck(lambda t, w: NF.partial_rms_norm(t, (16,), 0.25, w, eps=1e-6),
                             (x.clone().requires_grad_(), torch.randn(16, dtype=torch.float64, requires_grad=True)))
    layer = nn.RMSNorm(16, partial_fraction=0.25, eps=1e-6)
    torch.testing.assert_close(layer(x.float()), expected.float())
    assert list(layer.state_dict()) == ["weight"]
    with pytest.raises(ValueError, match=r"fraction: expected a number in \(0, 1\]"):
        NF.partial_rms_norm(x, (16,), 0.0)
    # re-scaling invariant, not re-centering invariant
    torch.testing.assert_close(NF.partial_rms_norm(3 * x, (16,), 0.5, eps=1e-30), NF.partial_rms_norm(x, (16,), 0.5, eps=1e-30))


def test_hand_derived_rms_norm_backward_matches_autograd():
    x = torch.randn(5, 3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(5, 3, 8, dtype=torch.float64)
    NF.rms_norm(x, (8,), w, eps=1e-6).backward(dy)
    dx, dw = backward.rms_norm_backward(dy, x.detach(), (8,), w.detach(), eps=1e-6)
    torch.testing.assert_close(dx, x.grad)
    torch.testing.assert_close(dw, w.grad)


def test_invariance_table_matches_the_paper_and_rmsnorm_theory():
    from normlib.book import invariance

    table = invariance.invariance_table()
    for method, row in invariance.PAPER_TABLE.items():
        assert table[method] == row, method
    assert table["RMSNorm"] == [True, False, False, True, False, True]
    assert table["GroupNorm (G=2)"] == [True, True, False, True, False, True]
    assert invariance.invariance_table(seed=1) == table


def test_language_models_shapes_and_training_step():
    from normlib.book.data import language_model_windows
    from normlib.book.models import GPT, CharLSTM

    ids = torch.arange(101) % 7
    inputs, targets = language_model_windows(ids, 10)
    assert inputs.shape == (10, 10) and torch.equal(targets[0], ids[1:11])
    for model in (CharLSTM(7, 16, layer_norm=True), CharLSTM(7, 16), GPT(7, 10, width=16, depth=1, heads=2),
                  GPT(7, 10, width=16, depth=1, heads=2, norm=lambda d: nn.RMSNorm(d, partial_fraction=0.5))):
        logits = model(inputs)
        assert logits.shape == (10, 10, 7)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    # the LSTM's unrolled states: step by step from a zero state, the last hidden state read out
    lstm = CharLSTM(7, 16)
    hidden, cells = lstm.unroll(inputs[:3])
    assert hidden.shape == cells.shape == (3, 10, 16)
    h0, c0 = lstm.cell(lstm.embed(inputs[:3, 0]), (torch.zeros(3, 16), torch.zeros(3, 16)))
    torch.testing.assert_close((hidden[:, 0], cells[:, 0]), (h0, c0))
    torch.testing.assert_close(lstm(inputs[:3]), lstm.head(hidden))
    # causal: the logits at position t do not depend on later tokens
    gpt = GPT(7, 10, width=16, depth=1, heads=2).eval()
    changed = inputs.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 7
    torch.testing.assert_close(gpt(inputs)[:, :5], gpt(changed)[:, :5])
    with pytest.raises(ValueError, match="ids: expected at most 10 positions"):
        gpt(torch.zeros(1, 11, dtype=torch.long))


def test_shakespeare_language_model_task():
    from normlib.book.data import shakespeare_language_model
    from normlib.book.models import GPT
    from normlib.book.train import next_token_loss

    tokenizer, (x, y), (vx, vy) = shakespeare_language_model(32, val_windows=8)
    assert x.shape[1] == 32 and torch.equal(x[0, 1:], y[0, :-1]) and vx.shape == (8, 32)
    loss = next_token_loss(GPT(tokenizer.vocab_size, 32, width=16, depth=1, heads=2), (vx, vy))
    assert abs(loss.item() - np.log(tokenizer.vocab_size)) < 0.5  # untrained: about uniform


def test_seed_range_and_spread_table():
    from normlib.book.seeds import seed_range, spread_table

    assert seed_range(3, 2) == [3, 4]
    with pytest.raises(ValueError, match=r"count \(SEEDS\): expected a positive integer"):
        seed_range(0, 0)
    with pytest.raises(TypeError, match="seed must be an int"):
        seed_range(0.5, 2)
    table = spread_table({"gap": [0.5, -0.25]}, [0, 1], digits=2)
    assert table.splitlines() == ["| | seed 0 | seed 1 | mean | min | max |", "|---|---|---|---|---|---|",
                                  "| gap | 0.50 | -0.25 | 0.12 | -0.25 | 0.50 |"]
    with pytest.raises(ValueError, match=r"results\['gap'\] has 1 values for 2 seeds"):
        spread_table({"gap": [0.5]}, [0, 1])


def test_learning_rate_sensitivity_caps_diverged_runs_at_the_initial_loss():
    # capped: 2, 2.5, 4 (nan), 4 (inf), 4 (above the initial loss); best 2
    losses = [2.0, 2.5, float("nan"), float("inf"), 9.0]
    assert learning_rate_sensitivity(losses, initial_loss=4.0) == pytest.approx((0 + 0.5 + 2 + 2 + 2) / 5)
    assert learning_rate_sensitivity([3.0, 3.0], initial_loss=4.0) == 0.0
    with pytest.raises(ValueError, match="final_losses: expected a non-empty sequence"):
        learning_rate_sensitivity([], initial_loss=4.0)
    with pytest.raises(ValueError, match="initial_loss: expected a number"):
        learning_rate_sensitivity([1.0], initial_loss=float("nan"))
