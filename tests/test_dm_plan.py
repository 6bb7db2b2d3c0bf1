"""The DM step plan: every plan computes the per-class loss, the search keeps the fastest, the cache."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import torch

from proxynas.core import augment
from proxynas.core.condense import CondenseConfig, condense, dm_loss_per_class
from proxynas.core.condense._base import Problem, class_pools
from proxynas.core.condense._dm import dm_step
from proxynas.core.condense._plan import (
    CACHE_FILE,
    QUICK_MIN_ITERATIONS,
    Embedder,
    StepPlan,
    cache_key,
    cached,
    measure,
    quick,
    real_sizes_to_try,
    remember,
    search,
    sizes_to_try,
)
from proxynas.core.networks import build
from tests.conftest import make_dataset

K, B, IPC = 3, 6, 2


def _problem():
    data = make_dataset(num_classes=K, per_class=10, size=16)
    pools, _ = class_pools(data, 0.0, 0)
    return Problem(data, list(range(K)), pools, torch.device("cpu"), None)


def _per_class_loss_and_grad(net, problem, syn, idx, params):
    """The reference structure: every class's real and synthetic images through their own forward."""
    syn = syn.detach().clone().requires_grad_(True)
    groups = torch.arange(K)
    real = augment.apply(problem.real_images(idx), params, groups.repeat_interleave(B))
    s = augment.apply(syn, params, groups.repeat_interleave(IPC))
    loss = dm_loss_per_class(net, real.detach(), s, K)
    loss.backward()
    return loss.detach(), syn.grad


PLANS = [
    StepPlan(1),
    StepPlan(2),
    StepPlan(3),
    StepPlan(1, channels_last=True),
    StepPlan(3, inplace=True),
    StepPlan(2, channels_last=True, inplace=True),
    StepPlan(3, real_per_forward=4),  # pieces that cut across classes, and a short last one
    StepPlan(2, real_per_forward=5, channels_last=True),
]


@pytest.mark.parametrize(
    "model",
    [
        "d2-w8-relu-instancenorm-avg",
        "d2-w8-leakyrelu-groupnorm-max",
        "d1-w8-sigmoid-layernorm-none",
        "d2-w8-relu-none-avg",
    ],
)
@pytest.mark.parametrize("plan", PLANS, ids=StepPlan.label)
def test_every_plan_computes_the_per_class_loss_in_fp32(model, plan):
    problem = _problem()
    g = torch.Generator().manual_seed(0)
    net = build(model, 3, K, 16, seed=1).requires_grad_(False)
    idx = torch.stack([p[torch.randperm(len(p), generator=g)[:B]] for p in problem.pools])
    params = augment.sample_params(augment.DEFAULT_STRATEGY, K, (16, 16), g)
    syn = torch.randn(K * IPC, 3, 16, 16, generator=g)
    want_loss, want_grad = _per_class_loss_and_grad(net, problem, syn, idx, params)

    trial = syn.clone().requires_grad_(True)
    loss = dm_step(Embedder(net, plan).load(net), problem, trial, torch.arange(K), idx, params, plan)
    assert abs(float(loss) - float(want_loss)) <= 1e-6 * float(want_loss)
    # summation order differs by layout, so pixels are compared against the gradient's scale
    torch.testing.assert_close(trial.grad, want_grad, rtol=1e-5, atol=1e-5 * float(want_grad.abs().max()))


def test_embedder_copies_each_iterations_weights_into_one_network():
    a, b = (
        build("d1-w8-relu-instancenorm-avg", 3, K, 16, seed=1),
        build("d1-w8-relu-instancenorm-avg", 3, K, 16, seed=2),
    )
    emb = Embedder(a, StepPlan(1, channels_last=True))
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(emb.load(b).embed(x), b.embed(x))
    torch.testing.assert_close(emb.load(a).embed(x), a.embed(x))
    assert next(emb.net.parameters()).requires_grad is False


def test_sizes_to_try_are_powers_of_two_and_the_limit():
    assert sizes_to_try(10) == [1, 2, 4, 8, 10]
    assert sizes_to_try(8) == [1, 2, 4, 8]
    assert sizes_to_try(1) == [1]
    # a quarter of a class's real batch up to four classes', below what the limit holds, then all
    assert real_sizes_to_try(256, 10) == [64, 128, 256, 512, 1024, None]
    assert real_sizes_to_try(256, 2) == [64, 128, 256, None]
    assert real_sizes_to_try(2, 1) == [1, None]


def test_search_keeps_the_fastest_plan_one_knob_at_a_time():
    def fake(plan: StepPlan) -> float:
        if plan.compiled:
            return math.inf  # no compiler here
        real = {2: 1.0, 4: 0.5, 8: 0.7, 16: 0.8, None: 0.9}[plan.real_per_forward]
        syn = {1: 3.0, 2: 2.0, 3: 2.5}[plan.classes_per_forward]
        return real + syn - 0.5 * plan.channels_last + 0.1 * plan.inplace

    plan, record = search(lambda plans: {p: fake(p) for p in plans}, limit=3, fixed_size=False, batch_real=8)
    assert plan == StepPlan(2, real_per_forward=4, channels_last=True)
    times = record["seconds_per_step"]
    assert set(times) == {
        "3 classes/forward, 2 real/forward",
        "3 classes/forward, 4 real/forward",
        "3 classes/forward, 8 real/forward",
        "3 classes/forward, 16 real/forward",
        "3 classes/forward",
        "2 classes/forward, 4 real/forward",
        "1 classes/forward, 4 real/forward",
        "2 classes/forward, 4 real/forward, channels_last",
        "2 classes/forward, 4 real/forward, channels_last, inplace",
        "2 classes/forward, 4 real/forward, channels_last, compiled",
    }
    assert times["2 classes/forward, 4 real/forward, channels_last, compiled"] == math.inf


def test_search_with_batch_statistics_keeps_all_classes_in_one_forward():
    tried = []
    plan, _ = search(
        lambda plans: {p: tried.append(p) or 1.0 / (1 + p.compiled) for p in plans},
        limit=4,
        fixed_size=True,
        batch_real=8,
    )
    assert {(p.classes_per_forward, p.real_per_forward) for p in tried} == {(4, None)}
    assert plan == StepPlan(4, compiled=True)


@pytest.mark.parametrize(
    "compiled_time,winner", [(0.3, StepPlan(5, channels_last=True, compiled=True)), (math.inf, StepPlan(5))]
)
def test_the_quick_race_is_the_rule_against_itself_compiled(compiled_time, winner):
    plan, record = quick(lambda plans: {p: compiled_time if p.compiled else 1.0 for p in plans}, limit=5)
    assert plan == winner
    assert record["seconds_per_step"] == {
        "5 classes/forward": 1.0,
        "5 classes/forward, channels_last, compiled": compiled_time,
    }


def test_cache_round_trip_and_unreadable_cache(tmp_path):
    path = tmp_path / "plans.json"
    key = cache_key(torch.device("cpu"), model="ConvNet", ipc=10)
    assert cached(key, path) is None
    remember(key, StepPlan(2, channels_last=True), {"seconds_per_step": {"x": 1.0}}, path)
    assert cached(key, path) == StepPlan(2, channels_last=True)
    assert cached(cache_key(torch.device("cpu"), model="ConvNet", ipc=50), path) is None
    path.write_text("{not json")
    assert cached(key, path) is None


def test_condense_measures_once_then_reads_the_cache(tiny, tmp_path, monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)  # the compiled plan must fail over to eager
    cfg = CondenseConfig(
        dataset="tiny", ipc=2, iterations=2, batch_real=4, model="d1-w8-relu-instancenorm-avg", tune="yes"
    )
    first = condense(cfg, tmp_path / "a.safetensors", dataset=tiny).meta["step_plan"]
    assert first["source"] == "measured" and first["compiled"] is False
    chosen = StepPlan(
        **{k: first[k] for k in ("classes_per_forward", "real_per_forward", "channels_last", "inplace", "compiled")}
    )
    assert math.isinf(first["seconds_per_step"][dataclasses.replace(chosen, compiled=True).label()])
    again = condense(
        CondenseConfig(**{**cfg.to_dict(), "tune": "auto"}), tmp_path / "b.safetensors", dataset=tiny
    ).meta["step_plan"]
    assert again["source"] == "cache"
    assert {
        k: again[k] for k in ("classes_per_forward", "real_per_forward", "channels_last", "inplace", "compiled")
    } == {k: first[k] for k in ("classes_per_forward", "real_per_forward", "channels_last", "inplace", "compiled")}


def test_short_runs_use_the_memory_rule_without_timing(tiny, tmp_path):
    syn = condense(
        CondenseConfig(dataset="tiny", ipc=2, iterations=QUICK_MIN_ITERATIONS - 1, batch_real=4),
        tmp_path / "c.safetensors",
        dataset=tiny,
    )
    plan = syn.meta["step_plan"]
    assert plan["source"].startswith("memory rule") and plan["classes_per_forward"] == 3
    assert syn.meta["precision"] == "fp32"  # the default, whatever auto would measure here


def test_runs_too_short_to_search_race_the_rule_against_compiling_it(tiny, tmp_path, monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)  # the compiled plan fails over to the rule
    monkeypatch.setenv("PROXYNAS_CACHE", str(tmp_path / "cache"))
    cfg = CondenseConfig(
        dataset="tiny", ipc=2, iterations=QUICK_MIN_ITERATIONS, batch_real=4, model="d1-w8-relu-instancenorm-avg"
    )
    plan = condense(cfg, tmp_path / "q.safetensors", dataset=tiny).meta["step_plan"]
    assert plan["source"] == f"quick race ({QUICK_MIN_ITERATIONS} iterations)"
    assert (plan["classes_per_forward"], plan["compiled"], plan["channels_last"]) == (3, False, False)
    assert plan["seconds_per_step"]["3 classes/forward, channels_last, compiled"] == math.inf
    # a resumed or repeated short run takes the same plan; a long one still searches
    again = condense(cfg, tmp_path / "r.safetensors", dataset=tiny).meta["step_plan"]
    assert again["source"] == "cache (quick race)" and again["classes_per_forward"] == 3
    searched = condense(dataclasses.replace(cfg, tune="yes"), tmp_path / "s.safetensors", dataset=tiny)
    assert searched.meta["step_plan"]["source"] == "measured"
    assert len(json.loads((tmp_path / "cache" / CACHE_FILE).read_text())) == 2


@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("cc", "gcc", "clang")), reason="torch.compile's CPU backend needs a C++ compiler"
)
def test_compiled_plan_computes_the_per_class_loss_in_fp32():
    problem = _problem()
    g = torch.Generator().manual_seed(0)
    net = build("d2-w8-relu-instancenorm-avg", 3, K, 16, seed=1).requires_grad_(False)
    idx = torch.stack([p[torch.randperm(len(p), generator=g)[:B]] for p in problem.pools])
    params = augment.sample_params(augment.DEFAULT_STRATEGY, K, (16, 16), g)
    syn = torch.randn(K * IPC, 3, 16, 16, generator=g)
    want_loss, want_grad = _per_class_loss_and_grad(net, problem, syn, idx, params)
    plan = StepPlan(3, real_per_forward=4, compiled=True)
    emb = Embedder(build("d2-w8-relu-instancenorm-avg", 3, K, 16, seed=5), plan)
    for _ in range(2):  # the second iteration's weights reach the compiled graph, with no recompilation
        trial = syn.clone().requires_grad_(True)
        loss = dm_step(emb.load(net), problem, trial, torch.arange(K), idx, params, plan)
        assert abs(float(loss) - float(want_loss)) <= 1e-6 * float(want_loss)
        torch.testing.assert_close(trial.grad, want_grad, rtol=1e-5, atol=1e-5 * float(want_grad.abs().max()))


def test_measure_interleaves_plans_keeps_the_fastest_step_and_rules_out_failures():
    now, calls = [0.0], []
    durations = {StepPlan(1): iter([1.0, 9.0, 5.0, 7.0]), StepPlan(2): iter([1.0, 4.0, 6.0, 4.5])}  # warm-up first

    def step(plan):
        calls.append(plan)
        if plan.compiled:
            raise RuntimeError("InductorError: no compiler")
        now[0] += next(durations[plan])

    plans = [StepPlan(1), StepPlan(2), StepPlan(1, compiled=True)]
    result = measure(step, lambda: None, clock=lambda: now[0])(plans)
    assert result == {StepPlan(1): 5.0, StepPlan(2): 4.0, StepPlan(1, compiled=True): math.inf}
    # warm-ups first, then rounds that rotate which plan goes first
    assert calls == [*plans, StepPlan(1), StepPlan(2), StepPlan(2), StepPlan(1), StepPlan(1), StepPlan(2)]
