"""SyncBatchNorm and the training loop across processes: CPU processes joined by gloo,
spawned by the tests themselves (normlib.book.processes.spawn). Each spawn costs a few seconds."""

import pytest
import torch

from normlib import distributed, nn
from normlib.book.processes import spawn
from normlib.distributed import merge_statistics
from normlib.book.train import fit, seed_everything

C = 3


def whole_batch(n, shape=(C, 4, 2)):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64) * 3 + 50  # a large offset: stable merging matters
    dy = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    weight, bias = torch.rand(C, generator=g, dtype=torch.float64) + 0.5, torch.randn(C, generator=g, dtype=torch.float64)
    return x, dy, weight, bias


def batch_norm_results(layer, x, dy, steps=2):
    """Outputs, input gradient, weight and bias gradients, and running statistics after ``steps`` forwards."""
    x = x.clone().requires_grad_()
    for _ in range(steps - 1):
        layer(x)
    y = layer(x)
    y.backward(dy)
    return dict(y=y.detach(), dx=x.grad, dweight=layer.weight.grad, dbias=layer.bias.grad,
                running_mean=layer.running_mean.clone(), running_var=layer.running_var.clone(),
                num_batches_tracked=layer.num_batches_tracked.clone())


def sync_slice(sizes, momentum):
    """Run on each process: SyncBatchNorm on this process's slice of the whole batch."""
    r = distributed.rank()
    x, dy, weight, bias = whole_batch(sum(sizes))
    start = sum(sizes[:r])
    layer = nn.SyncBatchNorm(C, momentum=momentum).double()
    with torch.no_grad():
        layer.weight.copy_(weight), layer.bias.copy_(bias)
    return batch_norm_results(layer, x[start:start + sizes[r]], dy[start:start + sizes[r]])


@pytest.mark.parametrize("sizes,momentum", [([6], 0.1), ([3, 3], 0.1), ([5, 1, 2], None)])
def test_sync_batch_norm_over_processes_equals_batch_norm_on_the_whole_batch(sizes, momentum):
    x, dy, weight, bias = whole_batch(sum(sizes))
    reference = nn.BatchNorm2d(C, momentum=momentum).double()
    with torch.no_grad():
        reference.weight.copy_(weight), reference.bias.copy_(bias)
    expected = batch_norm_results(reference, x, dy)
    parts = spawn(sync_slice, len(sizes), sizes, momentum)
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), expected["y"])
    torch.testing.assert_close(torch.cat([p["dx"] for p in parts]), expected["dx"])
    # each process holds its share of the parameter gradients; DDP adds them up
    torch.testing.assert_close(sum(p["dweight"] for p in parts), expected["dweight"])
    torch.testing.assert_close(sum(p["dbias"] for p in parts), expected["dbias"])
    for p in parts:
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(p[key], expected[key])


def mismatched_channels():
    layer = nn.SyncBatchNorm(C + distributed.rank())
    layer(torch.randn(4, C + distributed.rank()))


def test_mismatched_channels_fail_clearly_instead_of_hanging():
    with pytest.raises(RuntimeError, match=r"process 0: ValueError: input: expected the same number of channels "
                                           r"on every process, got \[3, 4\]"):
        spawn(mismatched_channels, 2, timeout=20)


def test_single_process_sync_batch_norm_is_batch_norm_and_has_torch_state():
    x, dy, weight, bias = whole_batch(5)
    ours, theirs = nn.SyncBatchNorm(C).double(), nn.BatchNorm2d(C).double()
    for layer in (ours, theirs):
        with torch.no_grad():
            layer.weight.copy_(weight), layer.bias.copy_(bias)
    a, b = batch_norm_results(ours, x, dy), batch_norm_results(theirs, x, dy)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    torch_sync = torch.nn.SyncBatchNorm(C)
    assert repr(nn.SyncBatchNorm(C)) == repr(torch_sync)
    assert list(nn.SyncBatchNorm(C).state_dict()) == list(torch_sync.state_dict())
    nn.SyncBatchNorm(C).load_state_dict(torch_sync.state_dict())
    xs = x[:, :, 0, 0].clone().requires_grad_()
    for t in (xs, x.clone().requires_grad_()):
        assert torch.autograd.gradcheck(lambda t, w, b: distributed.sync_batch_norm(t, None, None, w, b),
                                        (t, weight.clone().requires_grad_(), bias.clone().requires_grad_()))
    ours.eval()
    torch.testing.assert_close(ours(x), theirs.eval()(x))
    for bad, match in [(torch.randn(1, C), "more than 1 value per channel"), (torch.randn(4, C + 1), "expected 3 channels"),
                       (torch.randn(4), "expected 2 or 3 or 4 or 5D input")]:
        with pytest.raises(ValueError, match=match):
            nn.SyncBatchNorm(C)(bad)


def test_merge_statistics_is_exact_and_stable():
    x = torch.randn(1000, 2, dtype=torch.float64) * 1e-3 + 1e4
    parts = [x[:1], x[1:1], x[1:400], x[400:]]  # uneven, one empty
    counts = torch.tensor([float(len(p)) for p in parts], dtype=torch.float64)
    means = torch.stack([p.mean(0) if len(p) else torch.zeros(2, dtype=torch.float64) for p in parts])
    m2s = torch.stack([((p - p.mean(0)) ** 2).sum(0) if len(p) else torch.zeros(2, dtype=torch.float64) for p in parts])
    total, mean, m2 = merge_statistics(counts, means, m2s)
    assert total == 1000
    torch.testing.assert_close(mean, x.mean(0))
    exact = x.var(0, correction=0)
    merged_error = ((m2 / 1000 - exact) / exact).abs().max()
    # the sums-of-squares formula that SyncBatchNorm avoids: E[x^2] - E[x]^2 from per-part sums
    sums, squares = torch.stack([p.sum(0) for p in parts]).sum(0), torch.stack([p.square().sum(0) for p in parts]).sum(0)
    naive_error = ((squares / 1000 - (sums / 1000) ** 2 - exact) / exact).abs().max()
    assert merged_error < 1e-7 and naive_error > 1e3 * merged_error, (merged_error, naive_error)


def test_convert_sync_batchnorm_swaps_normlib_and_torch_layers_and_shares_state():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), nn.BatchNorm1d(3), torch.nn.Sequential(torch.nn.BatchNorm2d(3)))
    weight = model[1].weight
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted is model and isinstance(model[1], nn.SyncBatchNorm) and isinstance(model[2][0], nn.SyncBatchNorm)
    assert model[1].weight is weight
    ghost = nn.BatchNorm1d(3, ghost_batch_size=2)
    assert nn.SyncBatchNorm.convert_sync_batchnorm(ghost) is ghost  # ghost batches stay per process


def make_mlp():
    seed_everything(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def train_mlp(sync=True):
    """The same call in one process or under a process group."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 5, generator=g)
    y = (x[:, 0] > 0).long()
    model = make_mlp()
    history = fit(model, (x, y), loss_fn=lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
                  optimizer=torch.optim.SGD(model.parameters(), lr=0.5), steps=12, batch_size=16,
                  generator=torch.Generator().manual_seed(0), progress=False, sync_batch_norm=sync,
                  evaluate=lambda m: {"val": torch.nn.functional.cross_entropy(m(x), y).item()}, eval_every=4)
    assert isinstance(model[1], nn.BatchNorm1d)  # fit synchronizes BN while it trains, then puts it back
    return {"loss": history.values("loss"), "val": history.values("val"),
            "state": {k: v.clone() for k, v in model.state_dict().items()}, "distributed": distributed.is_distributed()}


def test_fit_under_a_process_group_reproduces_the_single_process_run():
    single = train_mlp()
    assert not single["distributed"]
    synced = spawn(train_mlp, 2)
    for run in synced:
        assert run["distributed"]
        torch.testing.assert_close(torch.tensor(run["loss"]), torch.tensor(single["loss"]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.tensor(run["val"]), torch.tensor(single["val"]), rtol=1e-5, atol=1e-6)
        for key, value in single["state"].items():
            torch.testing.assert_close(run["state"][key], value, rtol=1e-4, atol=1e-5)
    per_device = spawn(train_mlp, 2, False)  # per-process BN statistics: ghost batches of 8, a different run
    assert not torch.allclose(torch.tensor(per_device[0]["loss"]), torch.tensor(single["loss"]), atol=1e-4)


TORCHRUN_SCRIPT = '''
import sys, torch
sys.path.insert(0, {tests!r})
from test_distributed import train_mlp
from normlib import distributed
run = train_mlp()            # the unchanged call: fit finds torchrun's environment itself
if distributed.rank() == 0:
    torch.save(run, {out!r})
'''


def test_fit_runs_unchanged_under_torchrun(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "rank0.pt"
    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out)))
    torchrun = Path(sys.executable).parent / "torchrun"
    process = subprocess.Popen([str(torchrun), "--standalone", "--nproc_per_node", "2", str(script)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and its workers: leave no process behind
        raise
    assert process.returncode == 0, stderr[-3000:]
    run, single = torch.load(out, weights_only=False), train_mlp()
    assert run["distributed"]
    torch.testing.assert_close(torch.tensor(run["loss"]), torch.tensor(single["loss"]), rtol=1e-5, atol=1e-6)
