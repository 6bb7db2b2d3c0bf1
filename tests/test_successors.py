"""DM's successors: M3D's kernel MMD loss and the factor-and-upsample parametrisation."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from proxynas.cli import default_name, main
from proxynas.core.condense import CondenseConfig, SyntheticSet, condense, dm_loss, merge, mmd_loss, parse_classes
from proxynas.core.condense._factor import decode, encode
from proxynas.core.condense._m3d import gaussian_kernel, linear_kernel, mmd2
from proxynas.core.networks import build
from proxynas.exceptions import UsageError
from tests.conftest import TINY_MODEL, interrupt_at, make_dataset


def test_gaussian_mmd_matches_hand_computed_case():
    # real (0,0), (2,0); syn (0,2). Pairwise squared distances 4, 4, 8: h = 2 (4 + 4 + 8) / (3*3 - 3) = 16/3.
    # One bandwidth, 2σ² = h: k(d) = σ² exp(-d / h), σ² = 8/3.
    real = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    syn = torch.tensor([[[0.0, 2.0]]], requires_grad=True)
    value = mmd2(real, syn, functools.partial(gaussian_kernel, multipliers=(1.0,)))
    e1, e2 = math.exp(-4 * 3 / 16), math.exp(-8 * 3 / 16)
    # mean k_rr = σ² (1 + e1) / 2, k_ss = σ², mean k_rs = σ² (e1 + e2) / 2
    assert value.item() == pytest.approx(8 / 3 * (1.5 - 0.5 * e1 - e2), rel=1e-6)
    value.sum().backward()
    # d/dy = -2 mean_i dk(x_i, y)/dy, dk/dy = -(2σ²/h) exp(-d/h) (y - x) = -exp(-d/h) (y - x); h held fixed
    want = e1 * torch.tensor([0.0, 2.0]) + e2 * torch.tensor([-2.0, 2.0])
    torch.testing.assert_close(syn.grad.view(2), want)


def test_the_bandwidth_ladder_averages_its_kernels():
    g = torch.Generator().manual_seed(0)
    real, syn = torch.randn(2, 5, 3, generator=g), torch.randn(2, 2, 3, generator=g)
    one = [mmd2(real, syn, functools.partial(gaussian_kernel, multipliers=(m,))) for m in (0.5, 2.0)]
    both = mmd2(real, syn, functools.partial(gaussian_kernel, multipliers=(0.5, 2.0)))
    torch.testing.assert_close(both, (one[0] + one[1]) / 2)


def test_mmd_is_zero_for_the_same_set_in_any_order_and_positive_otherwise():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 4, generator=g)
    for kernel in (gaussian_kernel, linear_kernel):
        same = mmd2(x, x[:, torch.randperm(6, generator=g)], kernel)
        torch.testing.assert_close(same, torch.zeros(3), atol=1e-5, rtol=0)
    assert (mmd2(x, x[:, :2] + 1.0, gaussian_kernel) > 1e-3).all()


def test_with_a_linear_kernel_mmd_is_dm_loss():
    net = build(TINY_MODEL, 3, 4, 16, seed=3).requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    real = torch.randn(4 * 6, 3, 16, 16, generator=g)
    syn_a = torch.randn(4 * 3, 3, 16, 16, generator=g).requires_grad_(True)
    syn_b = syn_a.detach().clone().requires_grad_(True)
    f_real = net.embed(real).unflatten(0, (4, 6))
    mmd = mmd_loss(f_real, net.embed(syn_a).unflatten(0, (4, 3)), kernel=linear_kernel)
    dm = dm_loss(f_real, net.embed(syn_b).unflatten(0, (4, 3)))
    assert mmd.item() == pytest.approx(dm.item(), rel=1e-4)
    mmd.backward()
    dm.backward()
    torch.testing.assert_close(syn_a.grad, syn_b.grad, rtol=1e-3, atol=1e-3 * float(syn_b.grad.abs().max()))


def test_wide_gaussians_tend_to_dm_loss_and_the_default_ladder_sees_what_means_miss():
    g = torch.Generator().manual_seed(4)
    real = torch.randn(2, 40, 8, generator=g, dtype=torch.float64)
    syn = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
    wide = functools.partial(gaussian_kernel, multipliers=(1e4,))  # fp64: the kernel sums are ~1e4x the loss
    torch.testing.assert_close(mmd2(real, syn, wide), ((real.mean(1) - syn.mean(1)) ** 2).sum(1), rtol=1e-3, atol=0)
    # the same mean (0) but another spread: DM sees nothing, the Gaussian MMD does
    tight = torch.stack([torch.full((8,), 0.1), torch.full((8,), -0.1)]).repeat(2, 1, 1)  # (K=2, 2, D=8)
    spread = 3 * tight
    assert dm_loss(spread, tight).item() == pytest.approx(0.0, abs=1e-9)
    assert mmd_loss(spread, tight).item() > 1e-2


def _base(**kw) -> CondenseConfig:
    return CondenseConfig(**{"ipc": 2, "model": TINY_MODEL, "iterations": 4, "batch_real": 6, **kw})


def test_m3d_with_a_linear_kernel_condenses_what_dm_condenses(tiny, tmp_path):
    dm = condense(_base(), tmp_path / "dm.safetensors", dataset=tiny)
    m3d = condense(_base(method="m3d", mmd_kernel="linear"), tmp_path / "m3d.safetensors", dataset=tiny)
    torch.testing.assert_close(m3d.images, dm.images, rtol=1e-4, atol=1e-5)
    assert m3d.meta["loss"] == "mmd-linear" and "loss" not in dm.meta
    gauss = condense(_base(method="m3d"), tmp_path / "gauss.safetensors", dataset=tiny)
    assert gauss.meta["loss"] == "mmd-gaussian" and gauss.meta["mmd_bandwidths"] == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert gauss.meta["config"]["mmd_kernel"] == "gaussian"
    assert not torch.allclose(gauss.images, dm.images, atol=1e-3)


def unbiased_mmd2(real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
    """The U-statistic (diagonals left out): unlike the loss's biased estimate, 0 in expectation for a
    perfect synthetic set, so a drop in it is progress and not the estimator's floor."""
    k_rr, k_rs, k_ss = gaussian_kernel(real, syn)
    off = lambda k: (k.sum((1, 2)) - k.diagonal(dim1=1, dim2=2).sum(1)) / (k.shape[1] * (k.shape[1] - 1))  # noqa: E731
    return off(k_rr) + off(k_ss) - 2 * k_rs.mean((1, 2))


@pytest.mark.parametrize(
    "kw", [{"method": "m3d"}, {"factor": 2}, {"method": "m3d", "factor": 2}], ids=["m3d", "dm-factor2", "m3d-factor2"]
)
def test_the_loss_decreases_on_a_small_problem(tiny, tmp_path, kw):
    # measured on networks the run never saw, every real image, no augmentation: from noise to below half
    base = dict(ipc=2, model=TINY_MODEL, batch_real=16, init="noise", seed=0, **kw)
    start = condense(CondenseConfig(iterations=0, **base), tmp_path / "a.safetensors", dataset=tiny).images
    end = condense(CondenseConfig(iterations=30, **base), tmp_path / "b.safetensors", dataset=tiny).images
    real = tiny.normalise(tiny.train.images[torch.argsort(tiny.train.labels, stable=True)])  # class-major

    def held_out(images: torch.Tensor) -> float:
        total = 0.0
        for seed in (101, 102, 103):
            net = build(TINY_MODEL, 3, 3, 16, seed=seed).requires_grad_(False)
            with torch.no_grad():
                if kw.get("method") == "m3d":
                    f_real, f_syn = net.embed(real).unflatten(0, (3, -1)), net.embed(images).unflatten(0, (3, -1))
                    total += float(unbiased_mmd2(f_real, f_syn).sum())
                else:
                    total += float(
                        dm_loss(net.embed(real).unflatten(0, (3, -1)), net.embed(images).unflatten(0, (3, -1)))
                    )
        return total

    assert held_out(end) < 0.5 * held_out(start)


@pytest.mark.parametrize("kw", [{"method": "m3d"}, {"method": "m3d", "factor": 2}], ids=["m3d", "m3d-factor2"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(tiny, tmp_path, kw):
    cfg = _base(iterations=12, checkpoint_every=4, **kw)
    straight = condense(cfg, tmp_path / "a.safetensors", dataset=tiny, device="cpu")
    out = tmp_path / "b.safetensors"
    interrupt_at(10, cfg, out, tiny)
    resumed = condense(cfg, out, dataset=tiny, device="cpu", resume=True)
    assert torch.allclose(resumed.images, straight.images, atol=1e-6)
    assert resumed.meta["loss_curve"] == pytest.approx(straight.meta["loss_curve"], rel=1e-5)


@pytest.mark.parametrize("kw", [{"method": "m3d"}, {"factor": 2}], ids=["m3d", "dm-factor2"])
def test_class_chunks_and_shards_give_the_whole_run(tmp_path, kw):
    data = make_dataset(num_classes=4)
    whole = condense(_base(**kw), tmp_path / "whole.safetensors", dataset=data)
    chunked = condense(_base(memory_budget=1, **kw), tmp_path / "chunked.safetensors", dataset=data)
    torch.testing.assert_close(chunked.images, whole.images, rtol=1e-5, atol=1e-5)
    parts = [tmp_path / f"part{i}.safetensors" for i in (1, 2)]
    for i, part in enumerate(parts, 1):
        condense(_base(classes=parse_classes(f"{i}/2", 4), **kw), part, dataset=data)
    merged = merge(parts, tmp_path / "merged.safetensors")
    torch.testing.assert_close(merged.images, whole.images, rtol=1e-5, atol=1e-5)
    assert merged.meta["loss_curve"] == pytest.approx(whole.meta["loss_curve"], rel=1e-4)


def test_an_m3d_shard_with_a_batchnorm_embedding_is_refused(tmp_path):
    with pytest.raises(UsageError, match="batch statistics over all classes"):
        condense(
            _base(method="m3d", model="d1-w8-relu-batchnorm-avg", classes=(0, 1)),
            tmp_path / "p.safetensors",
            dataset=make_dataset(num_classes=4),
        )


def test_decode_upsamples_a_hand_made_image_bilinearly():
    # pixel centres aligned: 1-D [a, b] -> [a, (3a + b)/4, (a + 3b)/4, b]; rows [0, 4], columns [0, 8]
    low = torch.tensor([[0.0, 4.0], [8.0, 12.0]]).view(1, 1, 2, 2)
    want = torch.tensor([[0.0, 1, 3, 4], [2, 3, 5, 6], [6, 7, 9, 10], [8, 9, 11, 12]])
    torch.testing.assert_close(decode(low, 4).view(4, 4), want)
    block = torch.arange(16.0).view(1, 1, 4, 4)  # encode: each 2x2 block's mean
    torch.testing.assert_close(encode(block, 2).view(2, 2), torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    assert encode(block, 1) is block


def test_a_factorised_set_holds_decoded_images_of_the_learned_ones(tiny, tmp_path):
    rnd = condense(CondenseConfig(method="random", ipc=4), tmp_path / "r.safetensors", dataset=tiny)
    start = condense(_base(ipc=4, factor=2, iterations=0), tmp_path / "f0.safetensors", dataset=tiny)
    # the same real draw as DM's start, learned at 8x8 and decoded to the 16x16 a candidate trains on
    torch.testing.assert_close(start.images, decode(encode(rnd.images, 2), 16))
    syn = condense(_base(ipc=4, factor=2), tmp_path / "f.safetensors", dataset=tiny)
    assert syn.images.shape == (12, 3, 16, 16) and syn.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert (syn.meta["factor"], syn.meta["decoded_images_per_class"], syn.meta["learned_images_per_class"]) == (
        2,
        4,
        1.0,
    )
    back = SyntheticSet.load(tmp_path / "f.safetensors")
    assert torch.equal(back.images, syn.images) and back.meta["config"]["factor"] == 2


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"method": "dsa", "factor": 2}, "--factor applies to --method dm or m3d only"),
        ({"factor": 0}, "--factor must be at least 1"),
        ({"mmd_kernel": "linear"}, "--mmd-kernel applies to --method m3d only"),
    ],
)
def test_settings_a_method_cannot_use_are_refused(kw, message):
    with pytest.raises(UsageError, match=message):
        CondenseConfig(**kw)


def test_cli_condenses_with_m3d_and_a_factor_and_refuses_one_that_does_not_divide(capsys, tmp_path):
    common = [
        "condense",
        "--dataset",
        "digits",
        "--ipc",
        "1",
        "--model",
        TINY_MODEL,
        "--iterations",
        "2",
        "--real-batch-size",
        "4",
        "--quiet",
    ]
    assert main([*common, "--method", "m3d", "--factor", "2", "--out", str(tmp_path / "m.safetensors")]) == 0
    meta = SyntheticSet.load(tmp_path / "m.safetensors").meta
    assert (meta["method"], meta["config"]["factor"], meta["config"]["mmd_kernel"]) == ("m3d", 2, "gaussian")
    capsys.readouterr()
    assert main([*common, "--factor", "3", "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--factor 3 does not divide the 32x32 images" in err[0]
    assert not list(tmp_path.glob("x*"))


def test_default_output_names_tell_the_variants_apart():
    names = {
        default_name(CondenseConfig(dataset="digits", **kw))
        for kw in ({}, {"factor": 2}, {"method": "m3d"}, {"method": "m3d", "mmd_kernel": "linear", "factor": 2})
    }
    assert names == {
        "digits-dm-ipc10-ConvNet-s0.safetensors",
        "digits-dm-f2-ipc10-ConvNet-s0.safetensors",
        "digits-m3d-ipc10-ConvNet-s0.safetensors",
        "digits-m3d-linear-f2-ipc10-ConvNet-s0.safetensors",
    }
