"""Devices: the --devices list, round-robin workers, and each launched worker on its own device.

CUDA is faked where a test needs GPUs (torch.cuda.is_available / device_count), so
these run on any machine; nothing here touches a real GPU.
"""

from __future__ import annotations

import dataclasses
import queue
from types import SimpleNamespace

import pytest
import torch

from proxynas.exceptions import UsageError
from proxynas.nas import search
from proxynas.nas.search import SearchConfig, launch, worker_configs
from proxynas.runtime.devices import assign, default_devices, parse_devices

CUDA = [torch.device("cuda", i) for i in range(4)]


@pytest.fixture
def gpus(monkeypatch):
    """Pretend torch sees ``n`` CUDA GPUs (0: none)."""

    def fake(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return fake


def test_parse_devices_reads_names_and_indices(gpus):
    gpus(4)
    assert parse_devices("cuda:0,cuda:2") == [CUDA[0], CUDA[2]]
    assert parse_devices("0, 2") == [CUDA[0], CUDA[2]]
    assert parse_devices("3,cuda:1") == [CUDA[3], CUDA[1]]  # the order given is the order dealt
    assert parse_devices("cpu") == [torch.device("cpu")]


@pytest.mark.parametrize(
    "spec,fragment",
    [
        ("cuda:4", "cuda:4 is not visible; this machine has 4 CUDA GPUs (cuda:0..cuda:3)"),
        ("0,0", "names cuda:0 twice"),
        ("cuda:1,1", "names cuda:1 twice"),
        ("0,,1", "has an empty entry"),
        ("", "has an empty entry"),
        ("gpu0", "'gpu0' is not a device"),
        ("-1", "'-1' is not a device"),
        ("meta", "'meta' is not a device"),
        ("cuda", "give each GPU's index"),
    ],
)
def test_bad_device_lists_are_one_line_errors(gpus, spec, fragment):
    gpus(4)
    with pytest.raises(UsageError, match="--devices") as e:
        parse_devices(spec)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_cuda_devices_without_cuda_are_refused(gpus):
    gpus(0)
    for spec in ("cuda:0", "0,1"):
        with pytest.raises(UsageError, match="torch sees no CUDA GPU"):
            parse_devices(spec)


def test_assign_deals_devices_round_robin():
    a, b, c = CUDA[:3]
    assert assign([a, b], 5) == [a, b, a, b, a]  # several workers per device
    assert assign([a, b, c], 2) == [a, b]
    assert assign([a], 3) == [a, a, a]
    with pytest.raises(UsageError, match="--workers must be at least 1"):
        assign([a], 0)


def test_default_devices_spread_auto_over_every_visible_gpu(gpus):
    gpus(3)
    assert default_devices("auto") == CUDA[:3]
    assert default_devices("cuda:1") == [CUDA[1]]  # one device named: every worker on it
    assert default_devices("cpu") == [torch.device("cpu")]
    gpus(0)
    assert default_devices("cpu") == [torch.device("cpu")]
    with pytest.raises(UsageError, match="torch sees no CUDA GPU"):
        default_devices("cuda")


def cfg(**kw) -> SearchConfig:
    return SearchConfig(study="s", proxy="p.safetensors", repeats=1, **kw)


def test_worker_configs_give_each_worker_its_device_and_nothing_else_changes(gpus):
    gpus(4)
    base = cfg(seed=7)
    configs = worker_configs(base, 3, [CUDA[0], CUDA[2]])
    assert [c.device for c in configs] == ["cuda:0", "cuda:2", "cuda:0"]
    assert all(c == dataclasses.replace(base, device=c.device) for c in configs)
    assert [c.device for c in worker_configs(base, 5)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0"]
    assert [c.device for c in worker_configs(cfg(device="cuda:3"), 2)] == ["cuda:3", "cuda:3"]


def test_launch_starts_each_worker_with_its_assigned_device(gpus, monkeypatch):
    gpus(2)
    started = []

    class FakeProcess:  # records what launch hands each worker instead of spawning it
        exitcode = 0
        pid = None

        def __init__(self, target, args, name):
            started.append((name, args[0]))

        def start(self) -> None:
            pass

        def is_alive(self) -> bool:
            return False

        def join(self, timeout=None) -> None:
            pass

    class FakeContext:
        Process = FakeProcess
        SimpleQueue = queue.SimpleQueue  # the workers' error channel: nothing is put on it here

    no_trials = SimpleNamespace(study_name="s", get_trials=lambda deepcopy: [])
    prepared = SimpleNamespace(study=no_trials, total=None, run=None)
    monkeypatch.setattr(search, "load", lambda c: None)
    monkeypatch.setattr(search, "prepare", lambda c, loaded: prepared)
    # the memory check has its own tests (test_resources.py); here every asked worker starts
    monkeypatch.setattr(search, "_worker_count", lambda cfg, loaded, devices: len(devices))
    monkeypatch.setattr(search, "save_study_note", lambda study, storage: None)  # notes: test_dashboard.py
    monkeypatch.setattr(search.multiprocessing, "get_context", lambda method: FakeContext)
    assert launch(cfg(), 3) is prepared
    assert [(name, c.device) for name, c in started] == [
        ("proxynas-worker-0", "cuda:0"),
        ("proxynas-worker-1", "cuda:1"),
        ("proxynas-worker-2", "cuda:0"),
    ]
    started.clear()
    launch(cfg(), 2, devices=[CUDA[1]])
    assert [c.device for _, c in started] == ["cuda:1", "cuda:1"]


def test_launch_refuses_bad_devices_before_preparing_the_study(gpus, monkeypatch):
    gpus(0)
    monkeypatch.setattr(search, "prepare", lambda c: pytest.fail("the study was prepared"))
    with pytest.raises(UsageError, match="torch sees no CUDA GPU"):
        launch(cfg(device="cuda:0"), 2)
    with pytest.raises(UsageError, match="--workers must be at least 1"):
        launch(cfg(device="cpu"), 0)
