"""DSA gradient matching: the distance by hand, the loop table, the method end to end."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from proxynas.core.condense import CondenseConfig, _dsa, checkpoint_path, condense
from proxynas.core.condense._dsa import freeze_batch_norm, gradient_distance, loops
from proxynas.core.networks import build
from proxynas.exceptions import UsageError
from tests.conftest import TINY_MODEL, make_dataset


def test_gradient_distance_by_hand():
    # linear (2, 2): row 0 cos = 1/sqrt(2), row 1 cos = -1 -> (1 - 1/sqrt(2)) + 2
    w_real, w_syn = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    # conv (1, 2, 1, 1) -> one row [3, 4] vs [4, 3]: cos = 24/25 -> 0.04
    c_real, c_syn = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1), torch.tensor([4.0, 3.0]).view(1, 2, 1, 1)
    # biases point in opposite directions, yet count for nothing
    b_real, b_syn = torch.tensor([1.0, 2.0]), torch.tensor([-1.0, -2.0])
    got = gradient_distance([w_real, c_real, b_real], [w_syn, c_syn, b_syn])
    assert got.item() == pytest.approx(2 + 1 - 1 / math.sqrt(2) + 0.04, abs=1e-5)


def test_gradient_distance_zero_for_identical_and_scale_free():
    g = [torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0)), torch.randn(5)]
    assert gradient_distance(g, g).item() == pytest.approx(0.0, abs=1e-5)
    # a positive rescaling of every row leaves the cosines unchanged
    assert gradient_distance(g, [3.0 * t for t in g]).item() == pytest.approx(0.0, abs=1e-5)
    # sign flip: every one of the 4 output rows has cos -1 -> distance 2 each
    assert gradient_distance(g, [-t for t in g]).item() == pytest.approx(8.0, abs=1e-4)


def test_gradient_distance_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="one per parameter"):
        gradient_distance([torch.ones(2, 2)], [torch.ones(2, 2), torch.ones(2)])


def test_loops_table_and_interpolation():
    assert loops(1) == (1, 1)
    assert loops(10) == (10, 50)
    assert loops(50) == (50, 10)
    assert loops(15) == (15, 38)  # halfway between (10, 50) and (20, 25): 37.5 rounded
    assert loops(5) == (5, 50)  # inner held at the ipc-10 value below it
    assert loops(100) == (50, 10)  # outer capped, inner held at the ipc-50 value


def test_freeze_batch_norm_sets_running_stats_then_eval():
    net = build("d2-w8-relu-batchnorm-avg", 3, 3, 16, seed=0)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    freeze_batch_norm(net, torch.randn(12, 3, 16, 16) + 2.0)
    assert bns and all(not m.training for m in bns)
    assert all(m.training for m in net.modules() if not isinstance(m, nn.BatchNorm2d))
    assert bns[0].num_batches_tracked.item() == 1 and bns[0].running_mean.abs().sum() > 0


def _cfg(**kw) -> CondenseConfig:
    base = {
        "dataset": "tiny",
        "method": "dsa",
        "ipc": 2,
        "model": TINY_MODEL,
        "iterations": 12,
        "batch_real": 8,
        "init": "noise",
        "seed": 3,
    }
    return CondenseConfig(**{**base, **kw})


@pytest.fixture
def small_loops(monkeypatch):
    """ipc 2 runs 2 outer steps with 2 inner epochs: exercises inner training, stays fast."""
    monkeypatch.setitem(_dsa.LOOPS, 2, (2, 2))


def test_artifact_records_method_and_loops(tmp_path, small_loops):
    data = make_dataset()
    seen = []
    syn = condense(
        _cfg(iterations=10),
        tmp_path / "p.safetensors",
        dataset=data,
        device="cpu",
        report=lambda done, total, loss: seen.append((done, total, loss)),
    )
    assert syn.images.shape == (6, 3, 16, 16) and syn.labels.tolist() == [0, 0, 1, 1, 2, 2]
    meta = syn.meta
    assert meta["method"] == "dsa" and (meta["outer_loop"], meta["inner_loop"]) == (2, 2)
    assert meta["lr_img"] == 0.1 and meta["lr_net"] == 0.01 and meta["iterations"] == 10
    assert meta["dsa_strategy"] == data.info.dsa_strategy and len(meta["loss_curve"]) == 10
    assert all(math.isfinite(v) and v > 0 for v in meta["loss_curve"])
    # the start (no loss yet), then every iteration
    assert seen == [(0, 10, None), *((i + 1, 10, pytest.approx(v)) for i, v in enumerate(meta["loss_curve"]))]
    assert not checkpoint_path(tmp_path / "p.safetensors").exists()


def test_matching_network_trains_with_plain_sgd_as_the_reference(tmp_path, small_loops, monkeypatch):
    # the reference main.py: optimizer_net = SGD(net.parameters(), lr=lr_net), no momentum
    made = []
    real_sgd = torch.optim.SGD

    def spy(params, **kw):
        opt = real_sgd(params, **kw)
        made.append(opt)
        return opt

    monkeypatch.setattr(torch.optim, "SGD", spy)
    syn = condense(_cfg(iterations=2), tmp_path / "p.safetensors", dataset=make_dataset(), device="cpu")
    images, *nets = made  # the synthetic images' optimiser, then one per iteration's network
    assert len(nets) == 2 and images.defaults["momentum"] == 0.5  # the images keep the reference's 0.5
    assert all(opt.defaults["momentum"] == 0 and opt.defaults["lr"] == 0.01 for opt in nets)
    assert syn.meta["net_momentum"] == 0


def test_loss_decreases(tmp_path):
    # ipc 1: one outer step, so each iteration is exactly one matching step
    syn = condense(
        _cfg(ipc=1, iterations=40, lr_img=1.0), tmp_path / "p.safetensors", dataset=make_dataset(), device="cpu"
    )
    curve = syn.meta["loss_curve"]
    assert sum(curve[-8:]) / 8 < 0.9 * sum(curve[:8]) / 8


def test_interrupt_then_resume_equals_uninterrupted(tmp_path, small_loops):
    data = make_dataset()
    full = condense(_cfg(), tmp_path / "full.safetensors", dataset=data, device="cpu")

    def stop_at_10(done, total, loss):
        if done == 10:
            raise KeyboardInterrupt

    out = tmp_path / "cut.safetensors"
    with pytest.raises(KeyboardInterrupt):
        condense(_cfg(), out, dataset=data, device="cpu", report=stop_at_10)
    assert checkpoint_path(out).exists() and not out.exists()
    resumed = condense(_cfg(), out, dataset=data, device="cpu", resume=True)
    assert torch.allclose(resumed.images, full.images, atol=1e-6)
    assert resumed.meta["loss_curve"] == pytest.approx(full.meta["loss_curve"], abs=1e-6)


def test_batchnorm_net_runs(tmp_path):
    syn = condense(
        _cfg(ipc=1, iterations=2, model="d2-w8-relu-batchnorm-avg"),
        tmp_path / "p.safetensors",
        dataset=make_dataset(),
        device="cpu",
    )
    assert syn.meta["matching_net_uses_batch_stats"] is True
    assert all(math.isfinite(v) for v in syn.meta["loss_curve"])


def test_bf16_is_refused(tmp_path):
    with pytest.raises(UsageError, match="--precision bf16 is not supported by --method dsa"):
        condense(_cfg(precision="bf16"), tmp_path / "p.safetensors", dataset=make_dataset(), device="cpu")


def test_shard_matches_whole_run_when_one_outer_step(tmp_path):
    # ipc 1 has no inner training, so a shard computes what the whole run computes for its classes
    data = make_dataset()
    full = condense(_cfg(ipc=1, iterations=4), tmp_path / "full.safetensors", dataset=data, device="cpu")
    shard = condense(
        _cfg(ipc=1, iterations=4, classes=(0, 2)), tmp_path / "shard.safetensors", dataset=data, device="cpu"
    )
    assert torch.allclose(shard.images, full.images[[0, 2]], atol=1e-6)
