"""normlib.book.gan: data, models, the alternating objective inside normlib.book.train.fit, and metrics."""

import math
import re

import pytest
import torch

from normlib.book import gan
from normlib.spectral import spectral_norm_estimates
from normlib.book.train import fit


def test_ring_of_gaussians_has_its_modes_where_the_centers_are():
    g = torch.Generator().manual_seed(0)
    samples = gan.ring_of_gaussians(8000, g, modes=8, radius=2.0, std=0.05)
    centers = gan.ring_centers(8, 2.0)
    assert torch.allclose(centers.norm(dim=1), torch.full((8,), 2.0))
    assignment = gan.nearest_mode(samples, centers, max_distance=0.3)
    assert (assignment >= 0).all()
    counts = torch.bincount(assignment, minlength=8).float()
    assert (counts - 1000).abs().max() < 150  # equal mixture
    distances = (samples - centers[assignment]).norm(dim=1)
    assert distances.pow(2).mean().sqrt().item() == pytest.approx(0.05 * math.sqrt(2), rel=0.05)


def test_modes_covered_counts_modes_with_a_quarter_of_their_share():
    assignments = torch.tensor([0] * 40 + [1] * 10 + [2] * 9 + [-1] * 41)  # 100 samples, 4 modes: share 25
    assert gan.modes_covered(assignments, 4, min_share=0.25) == 3  # needs 6.25: modes 0, 1 and 2
    assert gan.modes_covered(assignments, 4, min_share=0.4) == 2  # needs 10: modes 0 and 1
    assert gan.modes_covered(assignments, 4, min_share=1.0) == 1  # needs 25: mode 0
    assert gan.nearest_mode(torch.tensor([[0.0, 0.0], [5.0, 0.0]]), torch.tensor([[0.1, 0.0]]), 1.0).tolist() == [0, -1]


def test_sliced_wasserstein_is_zero_for_equal_samples_and_measures_a_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 2, generator=g)
    assert gan.sliced_wasserstein(a, a.clone(), rng=g) == 0
    # shifting every sample by t along x: each direction's 1-D distance is t |cos angle|,
    # whose average over directions in the plane is 2 t / pi
    shifted = a + torch.tensor([0.5, 0.0])
    assert gan.sliced_wasserstein(a, shifted, projections=4096, rng=g) == pytest.approx(1 / math.pi, rel=0.05)


def test_discriminators_apply_their_constraint():
    torch.manual_seed(0)
    sn = gan.mlp_discriminator(2, 16, "spectral_norm")
    assert len(spectral_norm_estimates(sn)) == 3
    for values in gan.layer_singular_values(sn):
        assert values[0].item() == pytest.approx(1.0, abs=0.05)  # W / sigma, sigma from 15 rounds at registration
    wn = gan.mlp_discriminator(2, 16, "weight_norm")
    assert all(hasattr(layer, "parametrizations") for layer in wn if isinstance(layer, torch.nn.Linear))
    plain = gan.mlp_discriminator(2, 16, "none")
    assert not any(hasattr(layer, "parametrizations") for layer in plain)
    assert plain(torch.randn(5, 2)).shape == (5, 1)
    assert gan.mlp_generator(4, 16, 2)(torch.randn(5, 4)).shape == (5, 2)


def test_gradient_penalty_measures_the_input_gradient_on_the_segments():
    # a linear critic has gradient w everywhere: the penalty is (||w|| - 1)^2
    critic = torch.nn.Linear(2, 1, bias=False, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(64, 2, generator=g, dtype=torch.float64), torch.randn(64, 2, dtype=torch.float64)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[0.6, 0.8]], dtype=torch.float64))
    assert gan.gradient_penalty(critic, real, fake, g).item() == pytest.approx(0.0, abs=1e-24)
    with torch.no_grad():
        critic.weight.mul_(3)
    assert gan.gradient_penalty(critic, real, fake, g).item() == pytest.approx(4.0, rel=1e-12)
    # D(x) = ||x||^2 / 2 has gradient x: with real == fake every point is the example itself
    energy = lambda x: 0.5 * x.pow(2).sum(dim=1, keepdim=True)
    expected = (real.norm(dim=1) - 1).pow(2).mean()
    assert gan.gradient_penalty(energy, real, real.clone(), g).item() == pytest.approx(expected.item(), rel=1e-12)
    # and between two different points it is evaluated on the segment, never outside it
    ends = torch.tensor([[2.0, 0.0]], dtype=torch.float64), torch.tensor([[4.0, 0.0]], dtype=torch.float64)
    values = [gan.gradient_penalty(energy, *ends, g).item() for _ in range(200)]
    assert 1.0 <= min(values) and max(values) <= 9.0 and max(values) - min(values) > 4


def test_gradient_penalty_is_differentiable_in_the_critic_weights():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(16, 3, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g, dtype=torch.float64)
    w1 = torch.randn(8, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(1, 8, generator=g, dtype=torch.float64, requires_grad=True)

    def penalty(w1, w2):
        critic = lambda x: torch.tanh(x @ w1.T) @ w2.T
        return gan.gradient_penalty(critic, real, fake, torch.Generator().manual_seed(1))

    assert torch.autograd.gradcheck(penalty, (w1, w2))


def test_wgan_gp_objective_trains_through_fit():
    setting = gan.TABLE_1_SETTINGS["D"]
    model, objective, history = _train("gradient_penalty", setting, steps=5, loss="wasserstein", penalty=10.0)
    assert math.isfinite(objective.discriminator_loss) and not history.diverged
    assert not any(hasattr(layer, "parametrizations") for layer in model.discriminator)


def test_objective_for_pairs_each_constraint_with_its_loss():
    make = lambda c: gan.objective_for(c, None, 5, torch.Generator())
    assert (make("clip").loss, make("clip").clip, make("clip").penalty) == ("wasserstein", 0.01, None)
    gp = make("gradient_penalty")
    assert (gp.loss, gp.clip, gp.penalty, gp.n_dis) == ("wasserstein", None, 10.0, 5)
    for constraint in ("none", "weight_norm", "spectral_norm"):
        assert (make(constraint).loss, make(constraint).clip, make(constraint).penalty) == ("standard", None, None)
    with pytest.raises(ValueError, match=re.escape("constraint: expected one of")):
        make("batch_norm")


def _train(constraint, setting, steps, clip=None, loss="standard", penalty=None):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    data = gan.ring_of_gaussians(4096, g)
    model = gan.GAN(gan.mlp_generator(4, 32, 2), gan.mlp_discriminator(2, 32, constraint), latent=4)
    objective = gan.AlternatingObjective(setting.adam(model.discriminator.parameters()), setting.n_dis, g,
                                         loss=loss, clip=clip, penalty=penalty)
    history = fit(model, (data,), loss_fn=objective, optimizer=setting.adam(model.generator.parameters()),
                  steps=steps, batch_size=setting.n_dis * 64, generator=g, progress=False)
    return model, objective, history


def test_alternating_objective_updates_both_players_through_fit():
    setting = gan.TABLE_1_SETTINGS["D"]
    model = gan.GAN(gan.mlp_generator(4, 32, 2), gan.mlp_discriminator(2, 32), latent=4)
    before = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(0)
    objective = gan.AlternatingObjective(setting.adam(model.discriminator.parameters()), setting.n_dis, g)
    steps = []
    original_step = objective.optimizer.step
    objective.optimizer.step = lambda *a, **k: steps.append(1) or original_step(*a, **k)
    fit(model, (gan.ring_of_gaussians(1024, g),), loss_fn=objective, optimizer=setting.adam(model.generator.parameters()),
        steps=3, batch_size=5 * 64, generator=g, progress=False)
    assert len(steps) == 3 * setting.n_dis  # n_dis discriminator updates per generator update
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert math.isfinite(objective.discriminator_loss)


def test_weight_clipping_keeps_every_discriminator_parameter_in_range():
    model, _, _ = _train("clip", gan.TABLE_1_SETTINGS["D"], steps=5, clip=0.01, loss="wasserstein")
    assert max(p.abs().max().item() for p in model.discriminator.parameters()) <= 0.01


def test_a_short_run_on_the_ring_learns_its_scale():
    """A sanity check that the objective trains a generator: after 300 updates its samples lie
    near the ring (radius 2) instead of near the origin where it starts."""
    model, _, history = _train("none", gan.TABLE_1_SETTINGS["C"], steps=300)
    with torch.no_grad():
        radii = model.sample(1000, torch.Generator().manual_seed(1)).norm(dim=1)
    assert 1.5 < radii.median().item() < 2.5, radii.median()
    assert not history.diverged


@pytest.mark.parametrize("call, error, message", [
    (lambda: gan.mlp_discriminator(2, 8, "batch_norm"), ValueError, "constraint: expected one of"),
    (lambda: gan.ring_of_gaussians(10, torch.Generator(), std=0), ValueError, "std: expected a positive number, got 0"),
    (lambda: gan.modes_covered(torch.zeros(3, dtype=torch.long), 2, min_share=0), ValueError, "min_share: expected a number in (0, 1]"),
    (lambda: gan.sliced_wasserstein(torch.zeros(3, 2), torch.zeros(4, 2)), ValueError, "b: expected the shape of a (3, 2), got (4, 2)"),
    (lambda: gan.AlternatingObjective(None, 0, torch.Generator()), ValueError, "n_dis: expected a positive int"),
    (lambda: gan.AlternatingObjective(None, 1, torch.Generator(), loss="hinge"), ValueError, "loss: expected 'standard' or 'wasserstein'"),
    (lambda: gan.AlternatingObjective(None, 1, torch.Generator(), clip=-1.0), ValueError, "clip: expected None or a positive number"),
    (lambda: gan.AlternatingObjective(None, 1, torch.Generator(), penalty=0.0), ValueError, "penalty: expected None or a positive number, got 0.0"),
    (lambda: gan.gradient_penalty(None, torch.zeros(3, 2), torch.zeros(2, 2)), ValueError, "fake: expected the shape of real (3, 2), got (2, 2)"),
])
def test_bad_arguments_are_named(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_objective_rejects_a_batch_that_does_not_split_into_n_dis_slices():
    model = gan.GAN(gan.mlp_generator(2, 8, 2), gan.mlp_discriminator(2, 8), latent=2)
    objective = gan.AlternatingObjective(torch.optim.Adam(model.discriminator.parameters()), 5, torch.Generator())
    with pytest.raises(ValueError, match=re.escape("batch: expected a multiple of n_dis = 5 examples, got 12")):
        objective(model, (torch.zeros(12, 2),))
