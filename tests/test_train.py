"""train_network / train_repeats: the schedule, reproducibility, epoch hooks, the config's choices, the CPU heap."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from proxynas.core import augment
from proxynas.core import train as T
from proxynas.core.networks import build
from proxynas.core.train import TrainConfig, train_network, train_repeats
from proxynas.exceptions import UnknownNameError, UsageError
from proxynas.runtime import allocator as A

SIZE = 8
CFG = TrainConfig(epochs=2, batch_size=4, dsa_strategy=augment.DEFAULT_STRATEGY)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops on a shared 2-core CPU wait milliseconds on a second thread; one is faster here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def data(n: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (n,), generator=g)


def net(seed: int = 0, net_id: str = "d1-w4-relu-batchnorm-avg") -> torch.nn.Module:
    return build(net_id, 3, 10, SIZE, seed=seed)


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t.clone() for t in model.state_dict().values()]


def test_unknown_choices_are_rejected_with_the_known_ones():
    with pytest.raises(UnknownNameError, match="batch, image"):
        TrainConfig(dsa_family="class")
    with pytest.raises(UnknownNameError, match="auto, sequential, stacked"):
        TrainConfig(repeat_mode="parallel")


def test_the_reference_draw_is_the_default_and_is_recorded():
    assert TrainConfig().dsa_family == "batch"
    assert dataclasses.asdict(TrainConfig())["dsa_family"] == "batch"  # studies record the protocol as asdict


@pytest.mark.parametrize("total", [1, 2, 7, 400])
def test_lr_decays_at_half_the_steps_as_multistep_lr_did(total):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[total // 2], gamma=0.1)
    for step in range(total):
        assert TrainConfig().lr_at(step, total) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


@pytest.mark.parametrize("dsa_family", list(T.DSA_FAMILY))
def test_a_seed_reproduces_a_run_and_another_seed_does_not(dsa_family):
    cfg = dataclasses.replace(CFG, dsa_family=dsa_family)
    runs = []
    for seed in (1, 1, 2):
        model = net()
        train_network(model, *data(), cfg, torch.Generator().manual_seed(seed))
        runs.append(weights(model))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


def test_dsa_families_draw_differently():
    runs = []
    for dsa_family in T.DSA_FAMILY:
        model = net()
        train_network(model, *data(), dataclasses.replace(CFG, dsa_family=dsa_family), torch.Generator().manual_seed(1))
        runs.append(model.classifier.weight.detach().clone())
    assert not torch.equal(*runs)


def test_on_epoch_runs_after_every_pass_including_a_cut_one_and_training_resumes_in_train_mode():
    model, epochs = net(), []

    def hook(epoch: int) -> None:
        epochs.append(epoch)
        model.eval()  # as a pruning hook's accuracy() does

    cfg = dataclasses.replace(CFG, steps=7)  # 3 batches a pass over 10 images: 3 + 3 + 1
    train_network(model, *data(), cfg, torch.Generator().manual_seed(0), hook)
    assert epochs == [0, 1, 2]
    assert model.features[1].num_batches_tracked.item() == 7  # BatchNorm trained (train mode) on every step


def test_normalise_applies_batch_by_batch():
    raw = (torch.rand(10, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)
    labels = torch.arange(10)

    def normalise(x: torch.Tensor) -> torch.Tensor:
        return (x.float() - 128) / 64

    a, b = net(), net()
    train_network(a, normalise(raw), labels, CFG, torch.Generator().manual_seed(5))
    train_network(b, raw, labels, CFG, torch.Generator().manual_seed(5), normalise=normalise)
    assert all(torch.equal(x, y) for x, y in zip(weights(a), weights(b), strict=True))


def test_one_generator_per_repeat():
    with pytest.raises(UsageError, match="one generator per repeat"):
        train_repeats([net(0), net(1)], *data(), CFG, [torch.Generator()])


def test_the_heap_settings_are_undone_after_training_and_nest():
    train_network(net(), *data(), CFG, torch.Generator())
    assert A._users == 0
    cpu = torch.device("cpu")
    with A.hot_loop_memory(cpu):
        with A.hot_loop_memory(cpu):
            assert A._users == 2
        assert A._users == 1
    assert A._users == 0


def test_every_heap_setting_fits_mallopts_c_int(monkeypatch):
    calls = []

    class FakeGlibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

        def malloc_trim(self, pad):
            return 1

    monkeypatch.setattr(A, "_glibc", lambda: FakeGlibc())
    with A.hot_loop_memory(torch.device("cpu")):
        pass
    # ctypes passes a Python int as a C int, cut to its low 32 bits: 2**62 became 0 ("trim always")
    assert calls and all(-(2**31) <= v < 2**31 for _, v in calls), calls
    assert dict(calls[:2]) == {A._M_MMAP_MAX: 0, A._M_TRIM_THRESHOLD: 2**31 - 1}


@pytest.mark.skipif(A._glibc() is None, reason="the heap settings are glibc's")
def test_the_heap_keeps_freed_activations_so_a_step_does_not_fault_its_pages_in_again():
    import resource

    def faults_per_step(steps: int = 12) -> list[int]:
        # 256 MiB: past glibc's largest mmap threshold (32 MiB), and larger than any hole an earlier
        # free may have left in this process's heap, so that the block sits at its top
        x = torch.ones(256 << 20 >> 2)
        counts = []
        for _ in range(steps):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            (x * 2).sum()  # a fresh block, written, then freed
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return counts

    with A.hot_loop_memory(torch.device("cpu")):
        counts = faults_per_step()
    # The heap grows over the first steps (new pages fault once each: 65,536 of 4 KiB for a
    # block); from then on a step reuses what the last one freed. With the block given back
    # at every free, as under glibc's own setting, every step faults all 65,536 again.
    assert sum(counts[-3:]) < 0.01 * 3 * 65_536, counts


def test_amp_on_a_cpu_without_fast_bf16_warns_once_and_names_the_fix(monkeypatch, caplog):
    from proxynas.core import train as train_module
    from proxynas.runtime import devices

    class Checked(Exception):
        pass

    def check(device):
        raise Checked(device)

    monkeypatch.setattr(train_module, "warn_if_slow_bf16", check)  # training in bf16 asks first
    with pytest.raises(Checked):
        train_network(net(), *data(), dataclasses.replace(CFG, precision="bf16"), torch.Generator())
    devices.warn_if_slow_bf16.cache_clear()
    monkeypatch.setattr(devices, "slow_bf16", lambda device: "bf16 matmuls run at 1.0 GFLOP/s (no bf16 units)")
    for _ in range(2):  # a second run in the process: no second warning
        devices.warn_if_slow_bf16(torch.device("cpu"))
    warnings = [r.getMessage() for r in caplog.records if "--precision" in r.getMessage()]
    devices.warn_if_slow_bf16.cache_clear()
    assert warnings == [
        "warning: --precision bf16 (autocast) slows this run down: bf16 matmuls run at 1.0 GFLOP/s "
        "(no bf16 units); use --precision fp32 or auto"
    ]


def test_slow_bf16_compares_measured_matmul_rates(monkeypatch):
    from proxynas.runtime import devices

    rates = {torch.float32: 80.0, torch.bfloat16: 1.1}
    monkeypatch.setattr(devices, "matmul_gflops", lambda device, dtype, n, reps: rates[dtype])
    devices.slow_bf16.cache_clear()
    assert devices.slow_bf16(torch.device("cpu")) == (
        "bf16 matmuls run at 1.1 GFLOP/s on this CPU against fp32's 80.0 (no bf16 units)"
    )
    rates[torch.bfloat16] = 400.0  # AMX
    devices.slow_bf16.cache_clear()
    assert devices.slow_bf16(torch.device("cpu")) is None
    devices.slow_bf16.cache_clear()


def test_training_runs_without_glibc(monkeypatch):
    monkeypatch.setattr(A, "_glibc", lambda: None)
    train_network(net(), *data(), CFG, torch.Generator())
    assert A._users == 0
