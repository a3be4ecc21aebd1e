"""Weight normalization's companions (Salimans & Kingma 2016): mean-only batch normalization
and the data-dependent initialization, against their definitions."""

import pytest
import torch
import torch.nn.functional as TF
from torch import nn as tnn

import normlib.functional as NF
from normlib import nn
from normlib.book.models import SmallCNN
from normlib.spectral import data_dependent_init_, weight_norm


def weight_normalized(model):
    for layer in model.modules():
        if isinstance(layer, (tnn.Conv2d, tnn.Linear)):
            weight_norm(layer)
    return model


# ---------------------------------------------------------------------------- mean-only BN
@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (2, 3, 4, 4)])
def test_mean_only_batch_norm_subtracts_the_batch_mean(shape):
    x = torch.randn(shape, dtype=torch.float64) * 3 + 5
    bias = torch.randn(3, dtype=torch.float64)
    running = torch.randn(3, dtype=torch.float64)
    dims = [d for d in range(x.dim()) if d != 1]
    view = (1, 3) + (1,) * (x.dim() - 2)
    y = NF.mean_only_batch_norm(x, running.clone(), bias, training=True)
    torch.testing.assert_close(y, x - x.mean(dims, keepdim=True) + bias.view(view), rtol=0, atol=1e-12)
    # the running mean moves as BatchNorm's does; the variance is never touched
    ours, theirs = running.clone(), running.clone()
    NF.mean_only_batch_norm(x, ours, bias, training=True, momentum=0.3)
    TF.batch_norm(x, theirs, torch.ones(3, dtype=torch.float64), training=True, momentum=0.3)
    torch.testing.assert_close(ours, theirs)
    # evaluation: the running mean, whatever the batch
    y = NF.mean_only_batch_norm(x[:1], ours, bias, training=False)
    torch.testing.assert_close(y, x[:1] - ours.view(view) + bias.view(view))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mean_only_batch_norm_half_precision_mean_in_fp32(dtype):
    x = (torch.randn(64, 4, 8) + 300).to(dtype)  # a large offset: the mean must not round in dtype
    y = NF.mean_only_batch_norm(x, None, training=True)
    expected = x.float() - x.float().mean((0, 2), keepdim=True)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), expected.to(dtype).float(), rtol=0, atol=0)


def test_mean_only_batch_norm_empty_batch():
    running = torch.randn(3)
    before = running.clone()
    y = NF.mean_only_batch_norm(torch.randn(0, 3, 4), running, torch.ones(3), training=True)
    assert y.shape == (0, 3, 4)
    assert torch.equal(running, before)


def test_mean_only_batch_norm_gradcheck():
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b: NF.mean_only_batch_norm(x, None, b, training=True), (x, b))
    running = torch.randn(3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, b: NF.mean_only_batch_norm(x, running, b), (x, b))


def test_mean_only_batch_norm_module():
    layer = nn.MeanOnlyBatchNorm(4, momentum=0.5)
    assert set(layer.state_dict()) == {"bias", "running_mean", "num_batches_tracked"}
    # its state dict is the subset of a BatchNorm2d's that it uses
    bn = tnn.BatchNorm2d(4)
    bn.running_mean.normal_()
    layer.load_state_dict({k: v for k, v in bn.state_dict().items() if k in layer.state_dict()})
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    x = torch.randn(6, 4, 3, 3) + 2
    y = layer(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(4), rtol=0, atol=1e-6)
    assert layer.num_batches_tracked.item() == 1
    layer.eval()
    torch.testing.assert_close(layer(x), x - layer.running_mean.view(1, 4, 1, 1))
    assert nn.MeanOnlyBatchNorm(4, bias=False).bias is None


BAD = [
    (lambda: NF.mean_only_batch_norm(torch.randn(4), None, training=True), ValueError,
     "input: expected at least 2 dimensions"),
    (lambda: NF.mean_only_batch_norm(torch.randn(4, 3), torch.zeros(2), training=True), ValueError,
     "running_mean: expected shape (3,)"),
    (lambda: NF.mean_only_batch_norm(torch.randn(4, 3), None, torch.zeros(4)), ValueError, "bias: expected shape (3,)"),
    (lambda: NF.mean_only_batch_norm(torch.randn(4, 3), None), ValueError,
     "running_mean: expected a tensor in evaluation mode"),
    (lambda: NF.mean_only_batch_norm(torch.randn(1, 3), None, training=True), ValueError,
     "expected more than 1 value per channel"),
    (lambda: NF.mean_only_batch_norm(torch.randn(4, 3), None, training=True, momentum=-1), ValueError,
     "momentum: expected a number in [0, 1]"),
    (lambda: NF.mean_only_batch_norm(torch.randn(4, 3), None, training=1), TypeError, "training: expected a bool"),
    (lambda: nn.MeanOnlyBatchNorm(0), ValueError, "num_features: expected a positive integer"),
    (lambda: nn.MeanOnlyBatchNorm(3)(torch.randn(2, 4)), ValueError, "input: expected 3 channels in dim 1"),
]


@pytest.mark.parametrize("call,error,message", BAD, ids=[m[:40] for _, _, m in BAD])
def test_mean_only_batch_norm_bad_input_is_named(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


# ---------------------------------------------------------------------------- data-dependent init
def unit_outputs(model, x):
    """Each Conv2d/Linear layer's output, keyed by name."""
    outputs = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: outputs.__setitem__(n, o))
             for n, m in model.named_modules() if isinstance(m, (tnn.Conv2d, tnn.Linear))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return outputs


def unit_statistics(output):
    dims = [0] if output.dim() == 2 else [0, 2, 3]
    return output.mean(dims), output.std(dims, correction=0)


@pytest.mark.parametrize("init_scale", [1.0, 0.1])
def test_data_dependent_init_standardizes_every_layer(init_scale):
    torch.manual_seed(0)
    model = weight_normalized(SmallCNN()).double()
    x = torch.randn(50, 1, 28, 28, dtype=torch.float64) * 2 + 1
    directions = {n: m.parametrizations.weight.original1.clone()
                  for n, m in model.named_modules() if hasattr(m, "parametrizations")}
    # a negligible eps: the default 1e-10 under the root moves a small unit's std by ~1e-8
    data_dependent_init_(model, x, init_scale=init_scale, eps=1e-300)
    for name, output in unit_outputs(model, x).items():
        mean, std = unit_statistics(output)
        torch.testing.assert_close(mean, torch.zeros_like(mean), rtol=0, atol=1e-10)
        torch.testing.assert_close(std, torch.full_like(std, init_scale), rtol=1e-8, atol=0)
    for name, m in model.named_modules():  # only g and b change: v, the direction, stays
        if name in directions:
            assert torch.equal(m.parametrizations.weight.original1, directions[name])


def test_data_dependent_init_is_the_papers_rule_for_unit_gains():
    """g = 1 / sigma[t], b = -mu[t] / sigma[t] for t = v.x / ||v||."""
    torch.manual_seed(1)
    layer = weight_norm(tnn.Linear(5, 3)).double()
    with torch.no_grad():
        layer.parametrizations.weight.original0.fill_(1.0)
        layer.bias.zero_()
    v = layer.parametrizations.weight.original1.detach().clone()
    x = torch.randn(40, 5, dtype=torch.float64) * 3
    t = x @ (v / v.norm(dim=1, keepdim=True)).T
    data_dependent_init_(layer, x, eps=1e-300)
    sigma, mu = t.std(0, correction=0), t.mean(0)
    torch.testing.assert_close(layer.parametrizations.weight.original0.flatten(), 1 / sigma)
    torch.testing.assert_close(layer.bias.detach(), -mu / sigma)


def test_data_dependent_init_without_bias_scales_only_and_keeps_buffers():
    torch.manual_seed(2)
    model = weight_normalized(SmallCNN(nn.MeanOnlyBatchNorm, nn.MeanOnlyBatchNorm)).double()
    x = torch.randn(30, 1, 28, 28, dtype=torch.float64)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    data_dependent_init_(model, x, eps=1e-300)
    for name, value in model.named_buffers():  # the init batch leaves no trace in running means
        assert torch.equal(value, buffers[name]), name
    for name, output in unit_outputs(model, x).items():
        _, std = unit_statistics(output)
        torch.testing.assert_close(std, torch.ones_like(std), rtol=1e-8, atol=0)


def test_data_dependent_init_bad_arguments():
    plain = SmallCNN()
    x = torch.randn(4, 1, 28, 28)
    with pytest.raises(ValueError, match="model: expected at least one layer under weight_norm"):
        data_dependent_init_(plain, x)
    with pytest.raises(TypeError, match="model: expected an nn.Module, got int"):
        data_dependent_init_(3, x)
    with pytest.raises(ValueError, match=r"init_scale: expected a number in \(0, inf\)"):
        data_dependent_init_(weight_normalized(SmallCNN()), x, init_scale=0)
    with pytest.raises(ValueError, match="per output unit"):
        data_dependent_init_(weight_norm(tnn.Linear(3, 2), dim=None), torch.randn(4, 3))
    with pytest.raises(ValueError, match="per output unit"):
        data_dependent_init_(weight_norm(tnn.ConvTranspose2d(3, 2, 3)), torch.randn(4, 3, 5, 5))
    model = weight_normalized(SmallCNN())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="inputs: expected more than one value per unit at layer 'hidden.0'"):
        data_dependent_init_(model, x[:1])  # the conv layers see positions; the first linear one 1 value
    for name, value in model.state_dict().items():  # the conv layers' init is undone
        assert torch.equal(value, before[name]), name
