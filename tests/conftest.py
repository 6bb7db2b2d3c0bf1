"""Shared fixtures and helpers: small datasets and studies that tests build themselves, the
command line run in-process, a PostgreSQL server where one answers."""

from __future__ import annotations

import collections
import errno
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from proxynas.core.data import Dataset, DatasetInfo, Split

if TYPE_CHECKING:  # the helpers import their layers when called, so a test of one layer loads only that layer
    import optuna

    from proxynas.core.condense import CondenseConfig
    from proxynas.nas.search import SearchConfig

TINY_MODEL = "d2-w8-relu-instancenorm-avg"  # a ConvNet small enough for many iterations on CPU


def make_dataset(
    num_classes: int = 3,
    per_class: int = 20,
    size: int = 16,
    channels: int = 3,
    test_per_class: int = 10,
    seed: int = 0,
) -> Dataset:
    """Classes that differ in mean brightness, so training on them can learn something."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        labels = torch.arange(num_classes).repeat_interleave(n)
        base = (labels.float() + 0.5) / num_classes * 255
        noise = torch.randn(len(labels), channels, size, size, generator=g) * 30
        images = (base.view(-1, 1, 1, 1) + noise).clamp(0, 255).to(torch.uint8)
        return Split(images, labels, num_classes)

    info = DatasetInfo(
        name="tiny",
        channels=channels,
        image_size=size,
        num_classes=num_classes,
        class_names=tuple(f"c{i}" for i in range(num_classes)),
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        dsa_strategy="color_crop_cutout_flip_scale_rotate",
    )
    return Dataset(info, split(per_class), split(test_per_class), source="tests.conftest.make_dataset")


@pytest.fixture
def tiny() -> Dataset:
    return make_dataset()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Decoded datasets go to a per-session temp cache, never the user's ~/.cache."""
    monkeypatch.setenv("PROXYNAS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def ctrl_c_default() -> None:
    """Popen's preexec_fn for a child that a test Ctrl-C's: SIGINT back to its default.

    A job started in the background of a non-interactive shell (CI under nohup, ``cmd &``)
    inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler, so the
    child would never see the test's Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``proxynas ARGV`` in this process: its exit code, stdout and stderr."""
    from proxynas.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, *fragments: str) -> None:
    """``err`` is one ``error:`` line, no traceback, holding every fragment."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def interrupt_at(iteration: int, cfg: CondenseConfig, out, data) -> None:
    """Run ``cfg`` into ``out`` and Ctrl-C it when ``iteration`` is reported; leaves the checkpoint."""
    from proxynas.core.condense import checkpoint_path, condense

    def interrupt(done, total, loss):
        if done == iteration:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        condense(cfg, out, dataset=data, report=interrupt)
    assert checkpoint_path(out).exists() and not out.exists()


TINY_SPACE = """
name = "tiny"
[axes]
depth = [1]
width = [8, 16]
act = ["relu"]
norm = ["none", "instancenorm"]
pool = ["avg"]
"""  # four configurations, each trained in well under a second on digits


@pytest.fixture(scope="module")
def proxy(tmp_path_factory) -> Path:
    """A random digits proxy set (ipc 2) holding out the validation split a search ranks on."""
    from proxynas.core.condense import CondenseConfig, condense
    from proxynas.core.data import load_dataset

    out = tmp_path_factory.mktemp("proxy") / "digits-random.safetensors"
    condense(
        CondenseConfig(dataset="digits", method="random", ipc=2, val_fraction=0.1), out, dataset=load_dataset("digits")
    )
    return out


@pytest.fixture
def space_file(tmp_path) -> Path:
    """:data:`TINY_SPACE` as a search-space file."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SPACE)
    return path


def config(proxy, space_file, storage, **kw) -> SearchConfig:
    """A search of ``space_file`` on ``proxy``: one epoch, one repeat, on the CPU."""
    from proxynas.core.train import TrainConfig
    from proxynas.nas.search import SearchConfig

    return SearchConfig(
        proxy=str(proxy),
        study=kw.pop("study", "s"),
        storage=storage,
        space=str(space_file),
        train=TrainConfig(epochs=kw.pop("epochs", 1), batch_size=250),
        device="cpu",
        repeats=kw.pop("repeats", 1),
        **kw,
    )


def completed_once(storage: str, study: str = "s", total: int = 4) -> list[optuna.trial.FrozenTrial]:
    """Every trial of ``study``, after asserting that ``total`` configurations completed once each."""
    import optuna
    from optuna.trial import TrialState

    from proxynas.nas.study import CONFIG_KEY

    trials = optuna.load_study(study_name=study, storage=storage).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = collections.Counter(t.user_attrs[CONFIG_KEY] for t in complete)
    assert len(counts) == total and set(counts.values()) == {1}, counts
    return trials


POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"  # the development server (trust auth)


@pytest.fixture(scope="session")
def postgres() -> str:
    """The SQLAlchemy URL of the test server's database ``test``; the test is skipped where none answers."""
    psycopg = pytest.importorskip("psycopg", reason="PostgreSQL tests need psycopg: pip install -e '.[postgres]'")
    try:
        psycopg.connect(POSTGRES, connect_timeout=5).close()
    except psycopg.OperationalError as e:
        pytest.skip(
            f"no PostgreSQL server answers at {POSTGRES} ({str(e).strip().splitlines()[0]}); start one to run this"
        )
    return POSTGRES.replace("postgresql://", "postgresql+psycopg://")


@pytest.fixture
def pg_url(postgres) -> Iterator[str]:
    """A fresh database on the test server, dropped afterwards."""
    import psycopg

    name = f"proxynas_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Callable[..., Path]]:
    """Mount a small tmpfs under ``tmp_path``: ``tmpfs(size_kib)`` -> its folder, for a full or read-only
    file system that fails as a real one does (root writes into a chmod-ed folder; nothing stops a
    write to a full tmpfs but the kernel). Skipped where this process may not mount (not root)."""
    mounted: list[Path] = []

    def mount(size_kib: int) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        argv = ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(where)]
        done = subprocess.run(argv, capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'mount failed'})")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=True)


def remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


def fill(where: Path) -> None:
    """Write zeros under ``where`` until its file system is full."""
    with open(where / "filler", "wb", buffering=0) as f:  # unbuffered: close has nothing left to write
        try:
            while True:
                f.write(bytes(4096))
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
