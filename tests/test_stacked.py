"""Stacked training of repeats equals sequential training; the probe measures, switches exactly and remembers."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from proxynas.core import stacked
from proxynas.core.networks import build
from proxynas.core.train import TrainConfig, accuracy, train_network, train_repeats

R, N, SIZE = 2, 12, 8
# Every norm with each activation and each pooling once (a Latin square over act x pool).
ACT_POOL = [("relu", "max"), ("sigmoid", "avg"), ("leakyrelu", "none")]
NORMS = ["none", "batchnorm", "layernorm", "instancenorm", "groupnorm"]
CFG = TrainConfig(epochs=2, batch_size=5, dsa_strategy="color_crop_cutout_flip_scale_rotate")  # 5+5+2 a pass
PROBED = dataclasses.replace(CFG, epochs=14)  # 42 steps: long enough to be probed


@pytest.fixture(autouse=True)
def fresh_verdicts_one_thread():
    """No verdict carried between tests; one thread, as tiny ops on a shared CPU wait on a second for ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    stacked.VERDICTS.clear()
    yield
    stacked.VERDICTS.clear()
    torch.set_num_threads(threads)


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (N,), generator=g)


def trained(net_id: str, mode: str, cfg: TrainConfig = CFG, on_epoch=None) -> list[torch.nn.Module]:
    nets = [build(net_id, 3, 10, SIZE, seed=r) for r in range(R)]
    gens = [torch.Generator().manual_seed(100 + r) for r in range(R)]
    train_repeats(nets, *data(), dataclasses.replace(cfg, repeat_mode=mode), gens, on_epoch)
    return nets


def assert_same_nets(a: list[torch.nn.Module], b: list[torch.nn.Module]) -> None:
    for net_a, net_b in zip(a, b, strict=True):
        state_a, state_b = net_a.state_dict(), net_b.state_dict()
        assert state_a.keys() == state_b.keys()
        for name in state_a:  # parameters, BatchNorm running statistics and num_batches_tracked
            torch.testing.assert_close(state_a[name], state_b[name], rtol=1e-4, atol=1e-5, msg=name)


def raw(images: torch.Tensor) -> torch.Tensor:
    return (images * 40 + 128).clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("act,pool", ACT_POOL)
def test_stacked_training_gives_the_weights_and_accuracies_of_sequential(norm, act, pool):
    net_id = f"d2-w4-{act}-{norm}-{pool}"
    seq, stk = trained(net_id, "sequential"), trained(net_id, "stacked")
    assert_same_nets(seq, stk)
    images, labels = data(1)
    for a, b in zip(seq, stk, strict=True):
        assert accuracy(a, raw(images), labels, lambda t: t.float() / 40) == accuracy(
            b, raw(images), labels, lambda t: t.float() / 40
        )


def test_sequential_repeats_are_the_single_trainings():
    nets = trained("d1-w4-relu-batchnorm-avg", "sequential")
    for r, net in enumerate(nets):
        alone = build("d1-w4-relu-batchnorm-avg", 3, 10, SIZE, seed=r)
        train_network(alone, *data(), CFG, torch.Generator().manual_seed(100 + r))
        for name, t in alone.state_dict().items():
            assert torch.equal(t, net.state_dict()[name]), name


def test_repeats_differ_from_each_other():
    a, b = trained("d1-w4-relu-none-avg", "stacked")
    assert not torch.equal(a.classifier.weight, b.classifier.weight)


@pytest.mark.parametrize("stacked_faster", [False, True])
def test_probe_switches_layouts_exactly_and_records_its_verdict(monkeypatch, stacked_faster):
    now = [0.0]  # a fake clock that each step advances by its layout's cost
    monkeypatch.setattr(stacked, "_clock", lambda device: now[0])
    for layout, cost in ((stacked.Sequential, 1.0), (stacked.Stacked, 0.5 if stacked_faster else 2.0)):

        def step(self, xs, ys, lr, real=layout.step, cost=cost):
            real(self, xs, ys, lr)
            now[0] += cost

        monkeypatch.setattr(layout, "step", step)
    auto = trained("d2-w4-relu-batchnorm-max", "auto", PROBED)
    seq = trained("d2-w4-relu-batchnorm-max", "sequential", PROBED)
    assert_same_nets(auto, seq)
    assert list(stacked.VERDICTS.values()) == ["stacked" if stacked_faster else "sequential"]


def test_a_verdict_is_reused_and_short_runs_do_not_probe(monkeypatch):
    trained("d1-w4-relu-none-avg", "auto", PROBED)
    assert len(stacked.VERDICTS) == 1

    def no_probe(*args, **kwargs):
        raise AssertionError("probed again")

    monkeypatch.setattr(stacked, "Probe", no_probe)
    trained("d1-w4-relu-none-avg", "auto", PROBED)  # the same shape: the verdict
    trained("d1-w4-relu-none-max", "auto", dataclasses.replace(CFG, epochs=4))  # 12 steps: too short to probe
    train_repeats([build("d1-w4-relu-none-max", 3, 10, SIZE)], *data(), PROBED, [torch.Generator()])  # one repeat


def test_on_epoch_sees_the_current_weights_in_every_mode():
    seen: dict[str, list[torch.Tensor]] = {}
    for mode in ("sequential", "stacked"):
        nets = [build("d1-w4-relu-batchnorm-avg", 3, 10, SIZE, seed=r) for r in range(R)]
        seen[mode] = []

        def hook(epoch: int, nets=nets, mode=mode) -> None:
            seen[mode].append(nets[0].classifier.weight.detach().clone())
            nets[0].eval()  # as a pruning hook's accuracy() does; training must go on in train mode

        train_repeats(
            nets,
            *data(),
            dataclasses.replace(CFG, repeat_mode=mode),
            [torch.Generator().manual_seed(100 + r) for r in range(R)],
            hook,
        )
        assert nets[0].features[1].num_batches_tracked.item() == CFG.total_steps(N)
    assert len(seen["sequential"]) == CFG.epochs
    for a, b in zip(seen["sequential"], seen["stacked"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.equal(seen["stacked"][0], seen["stacked"][1])


def test_a_stack_too_large_for_the_free_memory_is_not_probed(monkeypatch):
    monkeypatch.setitem(stacked._FREE_MEMORY, "cpu", lambda device: 1000)  # bytes

    def no_probe(*args, **kwargs):
        raise AssertionError("probed a stack that does not fit")

    monkeypatch.setattr(stacked, "Probe", no_probe)
    trained("d1-w4-relu-none-avg", "auto", PROBED)
    assert not stacked.VERDICTS


def test_compiling_falls_back_to_the_plain_net_without_a_compiler(monkeypatch):
    monkeypatch.setitem(stacked._COMPILER, "cpu", lambda: False)
    model = build("d1-w4-relu-none-avg", 3, 10, SIZE)
    assert stacked.compiled(model, torch.device("cpu")) is model
    assert stacked.compiled(model, torch.device("meta")) is model  # no compiler known for the device


@pytest.mark.slow
def test_compiled_training_gives_the_weights_of_plain_training():
    plain = trained("d1-w4-relu-batchnorm-avg", "sequential")
    fast = trained("d1-w4-relu-batchnorm-avg", "sequential", dataclasses.replace(CFG, compile=True))
    assert_same_nets(plain, fast)


def test_compiling_on_a_machine_without_cuda_does_not_warn_of_cuda_home(tmp_path):
    """A CUDA toolkit beside no CUDA GPU makes torch.utils.cpp_extension warn as inductor imports it."""
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "CUDA_HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}

    def stderr_of(code: str) -> str:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stderr

    warning = f"No CUDA runtime is found, using CUDA_HOME='{tmp_path}'"
    assert warning in stderr_of("import torch.utils.cpp_extension")  # what inductor's import says unasked
    assert "No CUDA runtime" not in stderr_of(
        "from proxynas.core.stacked import quiet_compile_imports\n"
        "quiet_compile_imports()\n"
        "import torch.utils.cpp_extension"
    )
