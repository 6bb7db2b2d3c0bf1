"""Condensation: the DM loss, its batched formulation, coresets, artifacts, resume, shards."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch import nn

from proxynas.core.condense import (
    CondenseConfig,
    SyntheticSet,
    checkpoint_path,
    condense,
    dm_loss,
    dm_loss_per_class,
    merge,
    parse_classes,
)
from proxynas.core.condense._base import Checkpoint
from proxynas.core.condense._coreset import herd
from proxynas.core.networks import build
from proxynas.exceptions import ArtifactError, OutputExistsError, UsageError
from proxynas.runtime import allocator
from tests.conftest import TINY_MODEL, interrupt_at, make_dataset


class Linear(nn.Module):
    """embed(x) = W x on 1x1x2 'images': small enough to compute the loss by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T


def test_dm_loss_matches_hand_computed_case():
    # class 0: real [1,2],[3,4] -> features [1,4],[3,8], mean [2,6]; syn [0,1] -> [0,2]; diff [2,4] -> 20
    # class 1: real [1,1],[1,1] -> mean [1,2]; syn [1,0] -> [1,0]; diff [0,2] -> 4
    real = torch.tensor([[1.0, 2], [3, 4], [1, 1], [1, 1]]).view(4, 1, 1, 2)
    syn = torch.tensor([[0.0, 1], [1, 0]]).view(2, 1, 1, 2).requires_grad_(True)
    net = Linear()
    loss = dm_loss(net.embed(real).unflatten(0, (2, 2)), net.embed(syn).unflatten(0, (2, 1)))
    assert loss.item() == pytest.approx(24.0)
    loss.backward()
    # d/ds ||mu - W s||^2 = -2 W^T (mu - W s): class 0 -> -2 [2, 8]; class 1 -> -2 [0, 4]
    assert torch.allclose(syn.grad.view(2, 2), torch.tensor([[-4.0, -16.0], [0.0, -8.0]]))


def test_batched_and_per_class_formulations_agree_for_instancenorm():
    net = build("ConvNet", 3, 10, 32, seed=1).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    real = torch.randn(4 * 6, 3, 32, 32, generator=g)
    syn_a = torch.randn(4 * 2, 3, 32, 32, generator=g).requires_grad_(True)
    syn_b = syn_a.detach().clone().requires_grad_(True)
    loss_a = dm_loss(net.embed(real).unflatten(0, (4, 6)), net.embed(syn_a).unflatten(0, (4, 2)))
    loss_b = dm_loss_per_class(net, real, syn_b, 4)
    loss_a.backward()
    loss_b.backward()
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-5)
    assert torch.allclose(syn_a.grad, syn_b.grad, rtol=1e-4, atol=1e-7)


def test_dm_loss_decreases_on_a_small_problem(tiny, tmp_path):
    cfg = CondenseConfig(ipc=2, model=TINY_MODEL, iterations=150, batch_real=16, init="noise", seed=0, tune="no")
    syn = condense(cfg, tmp_path / "p.safetensors", dataset=tiny, device="cpu")
    curve = torch.tensor(syn.meta["loss_curve"])
    assert len(curve) == 150
    assert curve[-30:].mean() < 0.5 * curve[:30].mean()


def test_condensation_keeps_the_heap_while_it_runs_and_undoes_it_after(tiny, tmp_path):
    seen = []
    cfg = CondenseConfig(ipc=1, model=TINY_MODEL, iterations=3, batch_real=4, init="noise", seed=0)
    condense(
        cfg,
        tmp_path / "p.safetensors",
        dataset=tiny,
        device="cpu",
        report=lambda done, total, value: seen.append(allocator._users),
    )
    assert seen and set(seen) == {1}
    assert allocator._users == 0


def test_batchnorm_embedding_sees_every_class_in_one_batch(tiny, tmp_path, monkeypatch):
    import proxynas.core.condense._dm as dm

    seen: list[int] = []

    def build_recording(*args, **kwargs):
        net = build(*args, **kwargs)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].shape[0]))
        return net

    monkeypatch.setattr(dm, "build", build_recording)
    cfg = CondenseConfig(
        ipc=2, model="d1-w8-relu-batchnorm-avg", iterations=2, batch_real=5, memory_budget=1
    )  # a budget that would force one class per chunk without BN
    syn = condense(cfg, tmp_path / "bn.safetensors", dataset=tiny, device="cpu")
    assert syn.meta["embedding_uses_batch_stats"] is True
    # per iteration: all 3 classes x 5 real images in one batch, then 3 x 2 synthetic ones
    assert seen == [15, 6, 15, 6]


def test_chunking_classes_does_not_change_instancenorm_result(tiny, tmp_path):
    cfg = CondenseConfig(ipc=2, model=TINY_MODEL, iterations=5, batch_real=8)
    whole = condense(cfg, tmp_path / "a.safetensors", dataset=tiny, device="cpu")
    chunked = condense(
        CondenseConfig(**{**cfg.to_dict(), "memory_budget": 1}), tmp_path / "b.safetensors", dataset=tiny, device="cpu"
    )
    assert torch.allclose(whole.images, chunked.images, atol=1e-5)


def test_herding_selects_what_brute_force_greedy_selects():
    feats = torch.randn(9, 4, generator=torch.Generator().manual_seed(3))
    target = feats.mean(0)
    chosen: list[int] = []
    for _ in range(4):  # at each step, try every unused row by hand
        best = min(
            (i for i in range(9) if i not in chosen),
            key=lambda i: float(((target - feats[chosen + [i]].mean(0)) ** 2).sum()),
        )
        chosen.append(best)
    assert herd(feats, 4).tolist() == chosen


def test_herding_and_random_produce_real_images_of_each_class(tiny, tmp_path):
    for method in ("random", "herding"):
        cfg = CondenseConfig(method=method, ipc=3, model=TINY_MODEL)
        syn = condense(cfg, tmp_path / f"{method}.safetensors", dataset=tiny, device="cpu")
        idx = torch.tensor(syn.meta["selected_indices"])  # (classes, ipc)
        assert idx.shape == (3, 3)
        assert (tiny.train.labels[idx] == torch.arange(3)[:, None]).all()
        assert torch.allclose(syn.images, tiny.normalise(tiny.train.images[idx.flatten()]))
        assert syn.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_random_coreset_is_dm_starting_point(tiny, tmp_path):
    rnd = condense(CondenseConfig(method="random", ipc=2), tmp_path / "r.safetensors", dataset=tiny)
    dm0 = condense(CondenseConfig(ipc=2, model=TINY_MODEL, iterations=0), tmp_path / "d.safetensors", dataset=tiny)
    assert torch.equal(rnd.images, dm0.images)


def test_artifact_round_trips_with_metadata(tiny, tmp_path):
    cfg = CondenseConfig(ipc=2, model=TINY_MODEL, iterations=3, batch_real=4, seed=7, val_fraction=0.25)
    out = tmp_path / "p.safetensors"
    syn = condense(cfg, out, dataset=tiny, device="cpu")
    back = SyntheticSet.load(out)
    assert torch.equal(back.images, syn.images) and torch.equal(back.labels, syn.labels)
    assert back.meta == json.loads(json.dumps(syn.meta))
    assert CondenseConfig.from_dict(back.meta["config"]) == cfg
    assert back.meta["dataset"]["class_names"] == ["c0", "c1", "c2"]
    assert back.meta["versions"]["torch"] == torch.__version__
    assert len(back.meta["loss_curve"]) == 3
    assert out.with_suffix(".png").stat().st_size > 0
    assert not checkpoint_path(out).exists()


def test_excluded_validation_split_is_never_used(tiny, tmp_path):
    cfg = CondenseConfig(method="random", ipc=15, val_fraction=0.25)  # 15 of the 20 - 5 held out
    syn = condense(cfg, tmp_path / "p.safetensors", dataset=tiny)
    used = set(torch.tensor(syn.meta["selected_indices"]).flatten().tolist())
    assert used.isdisjoint(syn.meta["split"]["val_idx"])
    assert len(syn.meta["split"]["val_idx"]) == 15
    with pytest.raises(UsageError, match="larger than the smallest class"):
        condense(CondenseConfig(method="random", ipc=16, val_fraction=0.25), tmp_path / "q.safetensors", dataset=tiny)


def test_interrupted_run_resumes_to_the_uninterrupted_result(tiny, tmp_path):
    cfg = CondenseConfig(ipc=2, model=TINY_MODEL, iterations=12, batch_real=6, checkpoint_every=4)
    straight = condense(cfg, tmp_path / "a.safetensors", dataset=tiny, device="cpu")
    out = tmp_path / "b.safetensors"
    interrupt_at(10, cfg, out, tiny)
    with pytest.raises(OutputExistsError, match="--resume"):
        condense(cfg, out, dataset=tiny, device="cpu")
    resumed = condense(cfg, out, dataset=tiny, device="cpu", resume=True)
    assert torch.allclose(resumed.images, straight.images, atol=1e-6)
    assert resumed.meta["loss_curve"] == pytest.approx(straight.meta["loss_curve"], rel=1e-5)


def test_resume_with_other_settings_is_refused(tiny, tmp_path):
    cfg = CondenseConfig(ipc=2, model=TINY_MODEL, iterations=20, batch_real=4, checkpoint_every=5)
    out = tmp_path / "p.safetensors"
    interrupt_at(10, cfg, out, tiny)
    with pytest.raises(UsageError, match="lr_img"):
        condense(CondenseConfig(**{**cfg.to_dict(), "lr_img": 3.0}), out, dataset=tiny, resume=True)


def test_resume_may_change_the_iteration_count(tiny, tmp_path):
    cfg = CondenseConfig(ipc=2, model=TINY_MODEL, iterations=20, batch_real=4, checkpoint_every=2)
    short = condense(
        CondenseConfig(**{**cfg.to_dict(), "iterations": 12}), tmp_path / "short.safetensors", dataset=tiny
    )
    out = tmp_path / "p.safetensors"
    interrupt_at(10, cfg, out, tiny)
    with pytest.raises(UsageError, match="at iteration 10, beyond --iterations 9; pass --iterations 10"):
        condense(CondenseConfig(**{**cfg.to_dict(), "iterations": 9}), out, dataset=tiny, resume=True)
    # stopping at 12 instead of 20 gives what a run asked for 12 from the start gives
    resumed = condense(CondenseConfig(**{**cfg.to_dict(), "iterations": 12}), out, dataset=tiny, resume=True)
    assert torch.allclose(resumed.images, short.images, atol=1e-6)
    assert resumed.meta["loss_curve"] == pytest.approx(short.meta["loss_curve"], rel=1e-5)
    assert resumed.meta["config"]["iterations"] == 12


def test_checkpoints_are_due_by_iteration_count_or_by_the_clock(tmp_path):
    every5 = Checkpoint(tmp_path / "c", CondenseConfig(checkpoint_every=5, checkpoint_minutes=10))
    # a fresh checkpoint: minutes not yet up; and after the last iteration, before the final save
    assert [d for d in range(1, 13) if every5.due(d, 12)] == [5, 10, 12]
    always = Checkpoint(tmp_path / "c", CondenseConfig(checkpoint_every=1000, checkpoint_minutes=0))
    assert [d for d in range(1, 13) if always.due(d, 12)] == list(range(1, 13))
    with pytest.raises(UsageError, match="--checkpoint-minutes >= 0"):
        CondenseConfig(checkpoint_minutes=-1)


def test_a_run_saves_when_the_minutes_are_up(tiny, tmp_path):
    # DSA reports every iteration, before that iteration's checkpoint is written
    cfg = CondenseConfig(
        method="dsa", ipc=1, model=TINY_MODEL, iterations=4, batch_real=4, checkpoint_every=1000, checkpoint_minutes=0
    )
    out, seen = tmp_path / "p.safetensors", []

    def look(done, total, loss):
        seen.append(Checkpoint(checkpoint_path(out), cfg).load()[0] if checkpoint_path(out).exists() else None)

    condense(cfg, out, dataset=tiny, report=look)
    assert seen == [None, None, 1, 2, 3]  # the first report comes before the first iteration
    assert not checkpoint_path(out).exists()  # removed once the set is written


def test_shards_merge_into_the_single_process_result(tmp_path):
    data = make_dataset(num_classes=4)
    base = dict(ipc=2, model=TINY_MODEL, iterations=4, batch_real=5)
    whole = condense(CondenseConfig(**base), tmp_path / "whole.safetensors", dataset=data)
    parts = []
    for i in (1, 2):
        classes = parse_classes(f"{i}/2", 4)
        parts.append(tmp_path / f"part{i}.safetensors")
        part = condense(CondenseConfig(**base, classes=classes), parts[-1], dataset=data)
        assert part.labels.unique().tolist() == list(classes)
    merged = merge(parts, tmp_path / "merged.safetensors")
    assert torch.equal(merged.labels, whole.labels)
    assert torch.allclose(merged.images, whole.images, atol=1e-5)
    assert merged.meta["config"] == whole.meta["config"]
    assert merged.meta["loss_curve"] == pytest.approx(whole.meta["loss_curve"], rel=1e-4)
    # each merged class is exactly its part's images
    part1 = SyntheticSet.load(parts[0])
    for c in part1.labels.unique():
        assert torch.equal(merged.images[merged.labels == c], part1.images[part1.labels == c])
    with pytest.raises(ArtifactError, match="both"):
        merge([parts[0], parts[0]], tmp_path / "dup.safetensors")


def test_a_dm_shard_with_a_batchnorm_embedding_is_refused(tmp_path):
    # BatchNorm statistics come from the batch of all classes (docs/protocol.md §1): a shard's would differ
    data = make_dataset(num_classes=4)
    base = dict(ipc=1, model="d1-w8-relu-batchnorm-avg", iterations=1, batch_real=5)
    with pytest.raises(UsageError, match="batch statistics over all classes.*drop --classes"):
        condense(CondenseConfig(**base, classes=(0, 1)), tmp_path / "part.safetensors", dataset=data)
    assert not (tmp_path / "part.safetensors").exists()
    every = condense(CondenseConfig(**base, classes=(0, 1, 2, 3)), tmp_path / "all.safetensors", dataset=data)
    assert every.labels.tolist() == [0, 1, 2, 3]  # all the classes: one run, nothing differs
    condense(
        CondenseConfig(**{**base, "method": "random"}, classes=(0, 1)), tmp_path / "random.safetensors", dataset=data
    )  # a coreset has no batch statistics to share


@pytest.mark.parametrize("spec,expected", [("2/3", (1, 4)), ("0,3,3", (0, 3)), ("1/1", (0, 1, 2, 3, 4))])
def test_parse_classes(spec, expected):
    assert parse_classes(spec, 5) == expected


@pytest.mark.parametrize("spec", ["0/3", "4/3", "7", "a,b", "-1"])
def test_parse_classes_rejects(spec):
    with pytest.raises(UsageError, match="--classes"):
        parse_classes(spec, 5)


def test_foreign_and_damaged_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(ArtifactError, match="not a proxynas proxy set"):
        SyntheticSet.load(foreign)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ArtifactError, match="unreadable"):
        SyntheticSet.load(junk)
    with pytest.raises(ArtifactError, match="does not exist"):
        SyntheticSet.load(tmp_path / "missing.safetensors")


def test_all_pairs_of_seeds_give_different_sets(tiny, tmp_path):
    sets = [
        condense(CondenseConfig(method="random", ipc=2, seed=s), tmp_path / f"{s}.safetensors", dataset=tiny)
        for s in range(3)
    ]
    for a, b in itertools.combinations(sets, 2):
        assert not torch.equal(a.images, b.images)


def test_a_shard_of_an_imbalanced_dataset_draws_within_the_smallest_class(tmp_path):
    from proxynas.core.data import Dataset, Split

    data = make_dataset(num_classes=3)
    keep = (data.train.labels != 0) | (torch.arange(len(data.train.labels)) % 20 < 6)  # class 0: 6 images
    train = Split(data.train.images[keep], data.train.labels[keep], 3)
    lopsided = Dataset(data.info, train, data.test, data.source)
    base = dict(ipc=2, model=TINY_MODEL, iterations=3, batch_real=10, val_fraction=0.0)  # class 0 keeps its 6
    whole = condense(CondenseConfig(**base), tmp_path / "whole.safetensors", dataset=lopsided)
    shard = condense(CondenseConfig(**base, classes=(1, 2)), tmp_path / "shard.safetensors", dataset=lopsided)
    assert whole.meta["batch_real"] == shard.meta["batch_real"] == 6
    assert torch.allclose(shard.images, whole.images[whole.labels != 0], atol=1e-5)
    with pytest.raises(UsageError, match="smallest class \\(6 images\\)"):
        condense(
            CondenseConfig(**{**base, "method": "random", "ipc": 7}, classes=(1, 2)),
            tmp_path / "r.safetensors",
            dataset=lopsided,
        )
