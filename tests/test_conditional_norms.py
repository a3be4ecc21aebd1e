"""Conditional normalization: modulate against DiT's definition, FiLM, class-conditional BN,
adaLN-Zero and SPADE against transcriptions of their authors' modules (state dicts included),
the identities at initialization, SPADE's wash-out argument, half precision, gradcheck and
errors."""

import pytest
import torch
import torch.nn.functional as TF

import normlib.functional as NF
from normlib import nn
from normlib.book.models.conditional import one_hot_maps, uniform_label_maps


def test_modulate_matches_dits_definition_in_every_layout():
    tokens, shift, scale = torch.randn(3, 5, 8), torch.randn(3, 8), torch.randn(3, 8)
    dit = tokens * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)  # DiT's modulate
    torch.testing.assert_close(NF.modulate(tokens, shift, scale), dit)
    images = tokens.permute(0, 2, 1).reshape(3, 8, 5, 1)
    expected = images * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    torch.testing.assert_close(NF.modulate(images, shift, scale, channels_last=False), expected)
    maps = torch.randn(3, 8, 5, 1), torch.randn(3, 8, 5, 1)  # per pixel, as SPADE's
    torch.testing.assert_close(NF.modulate(images, *maps, channels_last=False), images * (1 + maps[1]) + maps[0])
    torch.testing.assert_close(NF.modulate(tokens[:, 0], shift, scale), tokens[:, 0] * (1 + scale) + shift)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_modulate_half_precision_rounds_once(dtype):
    x, shift, scale = (torch.randn(4, 6, 16) * 3).to(dtype), torch.randn(4, 16).to(dtype), torch.randn(4, 16).to(dtype)
    ours = NF.modulate(x, shift, scale)
    assert ours.dtype == dtype
    expected = (x.float() * (1 + scale.float()[:, None]) + shift.float()[:, None]).to(dtype)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_gradcheck_and_empty_batches():
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(NF.modulate, (x, shift, scale))
    images = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, g, b: NF.spade(x, g, b), (images, gamma, beta))
    assert NF.modulate(torch.empty(0, 5, 4), torch.empty(0, 4), torch.empty(0, 4)).shape == (0, 5, 4)
    assert NF.spade(torch.empty(0, 2, 3, 3), torch.empty(0, 2), torch.empty(0, 2)).shape == (0, 2, 3, 3)


def test_spade_function_is_parameter_free_batch_norm_then_modulation():
    x, gamma, beta = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    mean, var = torch.zeros(3), torch.ones(3)
    ours = NF.spade(x, gamma, beta, mean, var, training=True, momentum=0.1)
    bn = TF.batch_norm(x, torch.zeros(3), torch.ones(3), training=True, momentum=0.1)
    torch.testing.assert_close(ours, bn * (1 + gamma) + beta)
    torch.testing.assert_close(var, 0.9 + 0.1 * x.var(dim=(0, 2, 3)))  # running statistics as torch's


def test_film_is_the_authors_gamma_baseline_form():
    layer = nn.FiLM(4, 3)
    x, c = torch.randn(2, 3, 5, 5), torch.randn(2, 4)
    out = layer.generator(c)
    gammas, betas = 1.0 + out[:, :3], out[:, 3:]  # gammas first, then betas, gamma = 1 + delta
    torch.testing.assert_close(layer(x, c), gammas[:, :, None, None] * x + betas[:, :, None, None])
    torch.nn.init.zeros_(layer.generator.weight)
    torch.nn.init.zeros_(layer.generator.bias)
    assert torch.equal(layer(x, c), x)  # a zero generator leaves the features alone
    plain = nn.FiLM(4, 3, gamma_baseline=0.0, channels_last=True)
    tokens = torch.randn(2, 7, 3)
    out = plain.generator(c)
    torch.testing.assert_close(plain(tokens, c), out[:, None, :3] * tokens + out[:, None, 3:])


def test_conditional_batch_norm_picks_each_examples_gain_and_bias():
    layer = nn.ConditionalBatchNorm2d(3, num_classes=5)
    reference = torch.nn.BatchNorm2d(3, affine=False)
    x, labels = torch.randn(6, 3, 4, 4) * 2 + 1, torch.tensor([0, 4, 2, 2, 1, 3])
    torch.testing.assert_close(layer(x, labels), reference(x))  # fresh: a BatchNorm2d for every class
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x_hat = reference(x)
    expected = layer.weight[labels][:, :, None, None] * x_hat + layer.bias[labels][:, :, None, None]
    torch.testing.assert_close(layer(x, labels), expected)
    torch.testing.assert_close(layer.norm.running_var, reference.running_var)
    layer.eval()
    reference.eval()
    expected = layer.weight[labels][:, :, None, None] * reference(x) + layer.bias[labels][:, :, None, None]
    torch.testing.assert_close(layer(x, labels), expected)
    assert set(layer.state_dict()) == {"weight", "bias", "norm.running_mean", "norm.running_var",
                                       "norm.num_batches_tracked"}


class DiTBlockModulation(torch.nn.Module):
    """The conditioning of a DiT block, written from its published definition: SiLU and a
    linear layer to 6 chunks, zero-initialized, and the gated, modulated residual branch."""

    def __init__(self, hidden, branch):
        super().__init__()
        self.norm = torch.nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.branch = branch
        self.adaLN_modulation = nn.AdaLNZero(hidden, hidden)

    def forward(self, x, c):
        shift, scale, gate, *_ = self.adaLN_modulation(c)
        return x + gate.unsqueeze(1) * self.branch(NF.modulate(self.norm(x), shift, scale))


def test_adaln_zero_starts_as_the_identity_and_keeps_dits_names_and_order():
    block = DiTBlockModulation(8, torch.nn.Linear(8, 8))
    x, c = torch.randn(2, 5, 8), torch.randn(2, 8)
    assert torch.equal(block(x, c), x)
    assert {"adaLN_modulation.1.weight", "adaLN_modulation.1.bias"} <= set(block.state_dict())
    layer = nn.AdaLNZero(8, 4, chunks=6)
    torch.nn.init.normal_(layer[1].weight)
    c = torch.randn(3, 4)
    full = layer[1](TF.silu(c))
    chunks = layer(c)
    assert len(chunks) == 6 and all(t.shape == (3, 8) for t in chunks)
    for k, chunk in enumerate(chunks):  # shift_msa, scale_msa, gate_msa, shift_mlp, ...: in order
        torch.testing.assert_close(chunk, full[:, 8 * k:8 * (k + 1)])
    assert len(nn.AdaLNZero(8, 4, chunks=2)(c)) == 2  # the final layer's (shift, scale)


class TranscribedSPADE(torch.nn.Module):
    """SPADE written from the paper's definition with the authors' submodule names."""

    def __init__(self, norm_nc, label_nc, nhidden=16, ks=3):
        super().__init__()
        self.param_free_norm = torch.nn.BatchNorm2d(norm_nc, affine=False)
        self.mlp_shared = torch.nn.Sequential(torch.nn.Conv2d(label_nc, nhidden, ks, padding=ks // 2),
                                              torch.nn.ReLU())
        self.mlp_gamma = torch.nn.Conv2d(nhidden, norm_nc, ks, padding=ks // 2)
        self.mlp_beta = torch.nn.Conv2d(nhidden, norm_nc, ks, padding=ks // 2)

    def forward(self, x, segmap):
        normalized = self.param_free_norm(x)
        actv = self.mlp_shared(TF.interpolate(segmap, size=x.shape[2:], mode="nearest"))
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


def test_spade_matches_the_transcription_and_loads_its_state_dict():
    theirs = TranscribedSPADE(6, 4)
    ours = nn.SPADE(6, 4, hidden=16)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 6, 8, 8)
    segmap = one_hot_maps(torch.randint(0, 4, (3, 16, 16)), 4)  # a finer map, resized
    torch.testing.assert_close(ours(x, segmap), theirs(x, segmap))
    torch.testing.assert_close(ours.param_free_norm.running_mean, theirs.param_free_norm.running_mean)
    instance = nn.SPADE(6, 4, hidden=16, norm="instance")
    instance.load_state_dict(theirs.state_dict(), strict=False)
    expected = TF.instance_norm(x) * (1 + theirs.mlp_gamma(theirs.mlp_shared(segmap[:, :, ::2, ::2]))) \
        + theirs.mlp_beta(theirs.mlp_shared(segmap[:, :, ::2, ::2]))
    torch.testing.assert_close(instance(x, segmap), expected)


def test_a_uniform_label_map_is_washed_out_by_normalization_but_not_by_spade():
    # the paper's argument: conv, then InstanceNorm, of a one-label map is 0 whatever the label
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 8, 3, padding=1, padding_mode="replicate")
    maps = uniform_label_maps(4, 8)
    washed = TF.instance_norm(conv(maps))
    assert washed.abs().max() < 1e-5
    spade = nn.SPADE(8, 4, hidden=16, norm="instance").eval()
    features = torch.randn(1, 8, 8, 8).expand(4, -1, -1, -1)  # the same features for each label
    out = spade(features, maps)
    assert min((out[i] - out[j]).abs().max() for i in range(4) for j in range(i)) > 1e-2


BAD = [
    (lambda: NF.modulate(torch.randn(2, 3, 4), torch.randn(2, 3), torch.randn(2, 4)), ValueError,
     "shift: expected shape (2, 4) or (2, 3, 4)"),
    (lambda: NF.modulate(torch.randn(2, 3, 4), torch.randn(2, 4), torch.randn(3, 4)), ValueError,
     "scale: expected shape (2, 4)"),
    (lambda: NF.modulate(torch.randn(2, 3, 4), torch.randn(2, 4), torch.randn(2, 4), channels_last=0), TypeError,
     "channels_last: expected a bool"),
    (lambda: NF.spade(torch.randn(2, 3, 4), torch.randn(2, 3), torch.randn(2, 3)), ValueError,
     "input: expected 4 to 4 dimensions"),
    (lambda: nn.ConditionalBatchNorm2d(3, 4)(torch.randn(2, 3, 2, 2), torch.tensor([0.0, 1.0])), ValueError,
     "labels: expected a tensor of 2 integer class indices"),
    (lambda: nn.ConditionalBatchNorm2d(3, 4)(torch.randn(2, 3, 2, 2), torch.tensor([0, 4])), ValueError,
     "labels: expected class indices in [0, 3]"),
    (lambda: nn.AdaLNZero(8, 4)(torch.randn(2, 3, 4)), ValueError, "condition: expected"),
    (lambda: nn.SPADE(3, 4, norm="group"), ValueError, "norm: expected 'batch' or 'instance'"),
    (lambda: nn.SPADE(3, 4)(torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)), ValueError,
     "segmap: expected shape (2, 4, H, W)"),
    (lambda: nn.FiLM(0, 3), ValueError, "condition_features: expected a positive integer"),
]


@pytest.mark.parametrize("call,error,message", BAD, ids=[m[:40] for _, _, m in BAD])
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


# The chapter's workshop: normlib.book.models.conditional

def test_ddpm_sampler_recovers_a_point_mass_with_the_exact_noise_predictor():
    from normlib.book.models.conditional import DDPM

    ddpm, target = DDPM(steps=50), torch.tensor([[1.5, -0.5]])

    def exact(x, t, labels):  # the noise that explains x_t for data concentrated at target
        abar = ddpm.alpha_bars[t].view(-1, 1)
        return (x - abar.sqrt() * target) / (1 - abar).sqrt()

    samples = ddpm.sample(exact, torch.zeros(64, dtype=torch.long), (2,), torch.Generator().manual_seed(0))
    assert (samples - target).abs().max() < 0.05
    assert (ddpm.alpha_bars[1:] < ddpm.alpha_bars[:-1]).all()
    g = torch.Generator().manual_seed(1)
    assert ddpm.loss(exact, target.expand(8, 2), torch.zeros(8, dtype=torch.long), g) < 1e-10


def test_diffusion_mlp_conditionings():
    from normlib.book.models import DiffusionMLP
    from normlib.book.models.conditional import ring_samples

    g = torch.Generator().manual_seed(0)
    x, labels = ring_samples(6, g)
    t = torch.randint(0, 100, (6,), generator=g)
    assert torch.equal(DiffusionMLP("adaLN-Zero", width=16, depth=2)(x, t, labels), torch.zeros(6, 2))
    for conditioning in ("concat", "adaLN"):
        out = DiffusionMLP(conditioning, width=16, depth=2)(x, t, labels)
        assert out.shape == (6, 2) and out.abs().max() > 0
    with pytest.raises(ValueError, match="conditioning: expected one of"):
        DiffusionMLP("cross-attention")


def test_label_maps_and_the_wash_out_of_an_input_normalized_by_instance_norm():
    from normlib.book.models import LabelToImage
    from normlib.book.models.conditional import voronoi_label_maps

    maps = voronoi_label_maps(400, torch.Generator().manual_seed(0), classes=4, size=12)
    assert maps.shape == (400, 12, 12) and maps.min() >= 0 and maps.max() <= 3
    uniform = (maps == maps[:, :1, :1]).flatten(1).all(1).float().mean()
    assert 0.2 < uniform < 0.4  # a quarter drawn uniform, a few Voronoi maps happen to be
    uniform_maps = uniform_label_maps(4, 12)
    for norm, washed in (("instance", True), ("spade", False)):
        out = LabelToImage(norm, width=8).eval()(uniform_maps)
        assert ((out - out[:1]).abs().max() < 1e-5) == washed, norm
    with pytest.raises(ValueError, match="norm: expected one of"):
        LabelToImage("group")


def test_adaln_zero_network_starts_training_in_stages():
    # step 1: only the zero output layer has a gradient; step 2: the gates too, not the
    # branches behind them; step 3: the branches
    from normlib.book.models import DiffusionMLP
    from normlib.book.models.conditional import DDPM, ring_samples

    torch.manual_seed(0)
    model, ddpm = DiffusionMLP("adaLN-Zero", width=16, depth=2), DDPM()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    block = model.blocks[0]

    def step():
        optimizer.zero_grad()
        ddpm.loss(model, *ring_samples(64, g), g).backward()
        grads = {name: (p.grad is not None and p.grad.abs().max().item() > 0)
                 for name, p in model.named_parameters()}
        optimizer.step()
        return grads

    first = step()
    assert {name for name, moved in first.items() if moved} == {"output.weight", "output.bias"}
    second = step()
    gate_rows = block.modulation[1].weight.grad[32:48]  # (shift, scale, gate): the gate's rows
    assert gate_rows.abs().max() > 0 and block.modulation[1].weight.grad[:32].abs().max() == 0
    assert not second["blocks.0.mlp.0.weight"]
    third = step()
    assert third["blocks.0.mlp.0.weight"] and third["blocks.0.mlp.2.weight"]


def test_batch_norm_at_test_time_keeps_a_uniform_maps_label():
    from normlib.book.models import LabelToImage

    torch.manual_seed(0)
    model = LabelToImage("batch", width=8)
    model(one_hot_maps(torch.randint(0, 4, (16, 12, 12)), 4))  # running statistics
    out = model.eval()(uniform_label_maps(4, 12))
    assert (out - out[:1]).abs().amax(dim=(1, 2, 3))[1:].min() > 1e-5  # washed out: about 1e-7
    spade_instance = LabelToImage("spade-instance", width=8).eval()
    out = spade_instance(uniform_label_maps(4, 12))
    assert (out - out[:1]).abs().amax(dim=(1, 2, 3))[1:].min() > 1e-5  # washed out: about 1e-7
