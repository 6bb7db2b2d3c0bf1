"""Resources checked before work, and the storage or the disk failing beneath a command as one line.

- ``--workers`` is capped at the configurations left to run, refused where the workers would not
  fit in the memory available (``runtime.resources``), and warned about where CPU workers
  outnumber the cores; the same memory check holds for ``condense --workers``.
- A damaged or non-database SQLite file, a full disk, a read-only file system: one line, its own
  exit code, no traceback, the files left as they were (``runtime.failures``); a report is
  written whole or not at all (``outputs.staged_folder``); condense checkpoints its last
  iteration before its final save, so a failed save loses nothing and says ``--resume``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import shlex
import shutil
import socket
import sqlite3
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from proxynas.core.condense import Checkpoint, CondenseConfig, checkpoint_path, condense_sharded
from proxynas.exceptions import DiskFull, StorageDamaged, StorageReadOnly, StorageUnavailable, UsageError
from proxynas.nas.study import CONFIG_KEY
from proxynas.runtime import processes, resources
from proxynas.runtime.failures import classify
from proxynas.runtime.outputs import staged_folder
from tests.conftest import TINY_MODEL, assert_one_line_error, fill, run_cli

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "study-272cd54"  # a real studies.db: studies 'done' and 'partial'
TWO = """
name = "two"
[axes]
depth = [1]
width = [8, 16]
act = ["relu"]
norm = ["none"]
pool = ["avg"]
"""  # two configurations


@pytest.fixture
def started(monkeypatch) -> list[int]:
    """The number of worker processes each ``processes.start`` call starts (search and condense use it)."""
    counts: list[int] = []
    start = processes.start

    def counting(procs):
        counts.append(len(procs))
        start(procs)

    monkeypatch.setattr(processes, "start", counting)
    return counts


def _search(proxy, storage: str, space: Path, *flags: str) -> list[str]:
    return [
        "search",
        "--proxy",
        proxy,
        "--study",
        "s",
        "--storage",
        storage,
        "--space",
        space,
        "--epochs",
        "1",
        "--repeats",
        "1",
        "--device",
        "cpu",
        "--quiet",
        *flags,
    ]


def test_workers_are_capped_at_the_configurations_left(capsys, caplog, monkeypatch, started, proxy, tmp_path):
    space = tmp_path / "two.toml"
    space.write_text(TWO)
    monkeypatch.setattr(resources, "cpu_cores", lambda: 1)
    with caplog.at_level(logging.INFO):
        code, out, err = run_cli(capsys, *_search(proxy, f"sqlite:///{tmp_path / 's.db'}", space, "--workers", "1000"))
    assert code == 0, err
    assert started == [2]
    lines = [r.getMessage() for r in caplog.records]
    assert "--workers 1000: 2 configurations left to run, so 2 workers start" in lines
    warnings = [line for line in lines if line.startswith("warning: --workers 2 puts 2 workers on 1 CPU core")]
    assert len(warnings) == 1, lines
    assert "2 trials complete" in out


def test_a_sampler_s_workers_are_capped_at_the_configurations_not_yet_complete(
    capsys, caplog, started, proxy, tmp_path
):
    space = tmp_path / "two.toml"
    space.write_text(TWO)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    random = ("--sampler", "random", "--n-trials", "1")
    with caplog.at_level(logging.INFO):
        code, _, err = run_cli(capsys, *_search(proxy, storage, space, *random, "--workers", "3"))
    assert code == 0, err
    assert started == [2]  # not 3: a third worker could only train a configuration twice
    assert "--workers 3: 2 configurations left to run, so 2 workers start" in [r.getMessage() for r in caplog.records]
    trials = optuna.load_study(study_name="s", storage=storage).get_trials(states=(TrialState.COMPLETE,))
    done = {t.user_attrs[CONFIG_KEY] for t in trials}
    if len(done) == 1:  # both workers' random draws took the same configuration: one is left
        started.clear()
        code, _, err = run_cli(capsys, *_search(proxy, storage, space, *random, "--workers", "3"))
        assert code == 0, err
        assert started == [1]


def test_workers_that_would_not_fit_in_memory_are_refused_before_the_study_is_written(
    capsys, monkeypatch, started, proxy, space_file, tmp_path
):
    monkeypatch.setattr(resources, "available_memory", lambda: 1 << 30)  # 1 GiB
    code, _, err = run_cli(capsys, *_search(proxy, f"sqlite:///{tmp_path / 's.db'}", space_file, "--workers", "4"))
    assert code == UsageError.exit_code
    # each worker takes at least WORKER_BASE_BYTES (450 MiB): two fit in 1 GiB
    assert_one_line_error(err, "--workers 4 would not fit in memory", "1.0 GiB is available, enough for 2")
    assert "use --workers 2 or fewer" in err
    assert started == [] and not (tmp_path / "s.db").exists()  # nothing written, not even a new database


def test_workers_refused_on_an_existing_storage_leave_it_as_it_was(capsys, monkeypatch, started, proxy, tmp_path):
    space = tmp_path / "two.toml"
    space.write_text(TWO)
    db = tmp_path / "s.db"
    code, _, err = run_cli(capsys, *_search(proxy, f"sqlite:///{db}", space, "--study", "other"))
    assert code == 0, err
    before = _digest(tmp_path)
    monkeypatch.setattr(resources, "available_memory", lambda: 1 << 29)  # 512 MiB: not 2 workers of 450 MiB
    code, _, err = run_cli(capsys, *_search(proxy, f"sqlite:///{db}", space, "--workers", "4"))
    assert code == UsageError.exit_code and "would not fit in memory" in err
    assert _digest(tmp_path) == before  # no study 's', no history entry, no lock left


def test_plan_workers_says_how_many_fit_and_never_refuses_one(monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda: 10 << 30)
    footprint = lambda: (3 << 30, "3 GiB of something")  # noqa: E731
    cpu = [torch.device("cpu")]
    refused = r"--workers 4 would not fit .* 3.0 GiB \(3 GiB of something\), 12.0 GiB in all, .* enough for 3"
    with pytest.raises(UsageError, match=refused):
        resources.plan_workers(4, footprint, cpu)
    assert resources.plan_workers(3, footprint, cpu) == 3
    assert resources.plan_workers(1, lambda: (100 << 30, ""), cpu) == 1  # the run the user could start anyway
    assert resources.plan_workers(8, footprint, cpu, left=0) == 1  # a complete study: one worker finds nothing


def test_the_largest_candidate_sets_a_cpu_worker_s_memory(proxy):
    from proxynas.nas.footprint import search_worker_bytes
    from proxynas.nas.search_space import load_space
    from proxynas.nas.sources import proxy_source

    source = proxy_source(proxy)
    space = load_space()  # convnet720: d4-w256, unpooled, is the largest
    cpu = search_worker_bytes(source, space, ["cpu"], batch=250, repeats=5, stacked=False, trains=True)
    assert "d4-w256-" in cpu[1] and cpu[1].endswith("-none on the CPU")
    gpu = search_worker_bytes(source, space, ["cuda:0"], batch=250, repeats=5, stacked=False, trains=True)
    assert gpu[0] < 1 << 30 < cpu[0]  # on an accelerator the network's memory is the device's
    stacked = search_worker_bytes(source, space, ["cpu"], batch=250, repeats=5, stacked=True, trains=True)
    assert stacked[0] > 2 * cpu[0]


def test_condense_workers_that_would_not_fit_are_refused_before_any_shard(monkeypatch, started, tmp_path):
    monkeypatch.setattr(resources, "available_memory", lambda: 1 << 30)
    cfg = CondenseConfig(dataset="digits", ipc=1, iterations=3, batch_real=8, model=TINY_MODEL, tune="no")
    with pytest.raises(UsageError, match="--workers 3 would not fit in memory.*enough for 2"):
        condense_sharded(cfg, tmp_path / "x.safetensors", 3, [torch.device("cpu")])
    assert started == [] and list(tmp_path.iterdir()) == []


def test_condense_workers_are_capped_at_the_classes(monkeypatch, caplog, tmp_path):
    started: list[int] = []

    def stop_before_starting(procs):
        started.append(len(procs))
        raise UsageError("stopped before the shards start")

    monkeypatch.setattr(processes, "start", stop_before_starting)
    monkeypatch.setattr(resources, "available_memory", lambda: 1 << 50)  # the memory check has its own test
    cfg = CondenseConfig(dataset="digits", ipc=1, iterations=3, batch_real=8, model=TINY_MODEL, tune="no")
    with caplog.at_level(logging.INFO), pytest.raises(UsageError, match="stopped before the shards start"):
        condense_sharded(cfg, tmp_path / "x.safetensors", 1000, [torch.device("cpu")])
    assert started == [10]  # digits has 10 classes: one shard each
    assert "--workers 1000: 10 classes left to run, so 10 workers start" in [r.getMessage() for r in caplog.records]


# --- a damaged study database ------------------------------------------------------------------


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["truncated", "text"])
def damaged(request, tmp_path) -> Path:
    """A real studies.db cut short (as a full disk or an interrupted copy leaves it), or a text file."""
    db = tmp_path / "db" / "studies.db"
    db.parent.mkdir()
    if request.param == "truncated":
        data = (FIXTURE / "studies.db").read_bytes()
        db.write_bytes(data[: len(data) // 2])
    else:
        db.write_text("these are not the studies you are looking for\n")
    return db


@pytest.mark.parametrize("command", ["search", "baseline", "score", "report", "dashboard"])
def test_a_damaged_sqlite_file_is_one_line(capsys, proxy, space_file, damaged, command):
    url = f"sqlite:///{damaged}"
    before = _digest(damaged.parent)
    argv = {
        "search": _search(proxy, url, space_file),
        "baseline": ["baseline", "--kind", "early-stop", "--dataset", "digits", "--study", "b", "--storage", url]
        + ["--space", space_file],
        "score": ["score", "--dataset", "digits", "--metrics", "params", "--storage", url, "--space", space_file],
        "report": ["report", "--storage", url, "--proxy-studies", "done", "--whole", "partial"],
        "dashboard": ["dashboard", "--storage", url, "--port", str(_free_port())],
    }[command]
    if command == "report":
        argv += ["--out-dir", damaged.parent.parent / "report"]
    code, _, err = run_cli(capsys, *argv)
    assert code == StorageDamaged.exit_code
    assert_one_line_error(err, f"the storage {url} is not a usable database", "restore it from a backup")
    assert any(why in err for why in ("database disk image is malformed", "file is not a database"))
    assert _digest(damaged.parent) == before  # untouched: no journal, no lock file, no artifact folder
    assert not (damaged.parent.parent / "report").exists()


def test_every_truncation_of_a_database_is_one_line(capsys, tmp_path):
    data = (FIXTURE / "studies.db").read_bytes()
    for cut in (100, 4096, 8192, len(data) // 3, len(data) - 4096):
        db = tmp_path / f"cut{cut}.db"
        db.write_bytes(data[:cut])
        code, _, err = run_cli(
            capsys, "report", "--storage", f"sqlite:///{db}", "--proxy-studies", "done", "--whole", "partial",
            "--out-dir", tmp_path / "report",
        )  # fmt: skip
        assert code == StorageDamaged.exit_code, (cut, err)
        assert_one_line_error(err, "is not a usable database")


# --- a full disk ---------------------------------------------------------------------------------


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def studies(tmp_path) -> Path:
    folder = tmp_path / "studies"
    shutil.copytree(FIXTURE, folder)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


def _report(studies: Path, out: Path) -> list[str]:
    storage = f"sqlite:///{studies / 'studies.db'}"
    return ["report", "--storage", storage, "--proxy-studies", "done", "--whole", "partial", "--out-dir", out]


def test_a_full_disk_during_a_report_leaves_the_previous_one_whole(capsys, monkeypatch, studies, tmp_path):
    from matplotlib.figure import Figure

    out = tmp_path / "report"
    code, _, err = run_cli(capsys, *_report(studies, out))
    assert code == 0, err
    before = _digest(out)
    assert sorted(before) == ["config.json", "correlations.png", "ranking.csv", "scatter_top.png", "summary.csv"]
    save = Figure.savefig

    def half_then_full(self, fname, **kwargs):  # the first plot written whole, then the disk is full mid-file
        if Path(fname).name == "correlations.png":
            Path(fname).write_bytes(b"\x89PNG half")
            _full()
        return save(self, fname, **kwargs)

    monkeypatch.setattr(Figure, "savefig", half_then_full)
    code, _, err = run_cli(capsys, *_report(studies, out))
    assert code == DiskFull.exit_code
    assert_one_line_error(err, f"the disk is full writing {out} (No space left on device)", "--out-dir")
    assert f"{out} is left as it was" in err
    assert _digest(out) == before  # not one file of the new report, no 0-byte plot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "studies"]  # no temporary folder left

    code, _, err = run_cli(capsys, *_report(studies, tmp_path / "new"))  # a new folder: none, rather than half
    assert code == DiskFull.exit_code and "nothing was written there" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "studies"]


def test_a_staged_folder_replaces_files_whole_and_keeps_others(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.csv").write_text("old a")
    (out / "mine.txt").write_text("the user's")
    with staged_folder(out) as stage:
        (stage / "a.csv").write_text("new a")
        (stage / "b.png").write_bytes(b"png")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {
        "a.csv": b"new a",
        "b.png": b"png",
        "mine.txt": b"the user's",
    }
    with pytest.raises(RuntimeError), staged_folder(out) as stage:  # not a disk's failure: raised as it is
        (stage / "a.csv").write_text("newer")
        raise RuntimeError("a bug")
    assert (out / "a.csv").read_text() == "new a" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _condense(out: Path, *flags: str) -> list[str]:
    return [
        "condense", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--iterations", "3",
        "--model", TINY_MODEL, "--tune", "no", "--quiet", "--out", out, *flags,
    ]  # fmt: skip


def test_a_failed_final_save_of_condense_keeps_every_iteration_for_resume(capsys, monkeypatch, tmp_path):
    import proxynas.core.condense.run as run

    out = tmp_path / "dm.safetensors"
    monkeypatch.setattr(run, "save_grid", _full)  # the set is written, then its image grid finds the disk full
    code, _, err = run_cli(capsys, *_condense(out))
    assert code == DiskFull.exit_code
    ckpt = checkpoint_path(out)
    assert_one_line_error(err, f"the disk is full writing {out}", "run the same command with --resume", str(ckpt))
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.name]  # no set without its grid and config
    cfg = CondenseConfig(dataset="digits", ipc=1, iterations=3, model=TINY_MODEL, tune="no")
    assert Checkpoint(ckpt, cfg).load()[0] == 3  # every iteration

    monkeypatch.undo()
    code, _, err = run_cli(capsys, *_condense(out, "--resume"))
    assert code == 0, err
    assert not ckpt.exists() and out.exists() and out.with_suffix(".png").exists()
    code, _, err = run_cli(capsys, *_condense(tmp_path / "fresh.safetensors"))
    assert code == 0, err
    from proxynas.core.condense import SyntheticSet

    resumed, fresh = SyntheticSet.load(out), SyntheticSet.load(tmp_path / "fresh.safetensors")
    torch.testing.assert_close(resumed.images, fresh.images)
    assert resumed.meta["loss_curve"] == fresh.meta["loss_curve"]


def test_a_full_disk_at_a_checkpoint_says_resume(capsys, monkeypatch, tmp_path):
    from proxynas.core.condense import _base

    out = tmp_path / "dm.safetensors"
    monkeypatch.setattr(_base, "atomic_save", _full)
    code, _, err = run_cli(capsys, *_condense(out, "--checkpoint-every", "1"))
    assert code == DiskFull.exit_code
    assert_one_line_error(err, "the disk is full writing", ".ckpt", "run the same command with --resume")


# --- the classification itself --------------------------------------------------------------------


def _sqlite_error(db: Path, sql: str, uri: bool = False) -> Exception:
    conn = sqlite3.connect(str(db), uri=uri)
    try:
        conn.execute(sql)
    except sqlite3.Error as e:
        return e
    finally:
        conn.close()
    raise AssertionError("no error")


def test_each_failure_is_told_by_its_code_and_named_with_its_fix(tmp_path):
    shutil.copy(FIXTURE / "studies.db", tmp_path / "ok.db")
    url = "postgresql+psycopg://me:secret@db.example/studies"
    read_only = _sqlite_error(f"file:{tmp_path / 'ok.db'}?mode=ro", "CREATE TABLE x (a)", uri=True)
    (tmp_path / "text.db").write_text("text")
    cases = [
        (read_only, StorageReadOnly, "sqlite:///ok.db", "make the database file and its folder writable"),
        (_sqlite_error(tmp_path / "text.db", "SELECT 1 FROM studies"), StorageDamaged, None, "not a usable database"),
        (OSError(errno.ENOSPC, "No space left on device", "/r/x.png"), DiskFull, None, "writing /r/x.png"),
        (OSError(errno.EROFS, "Read-only file system", "/r/x.png"), StorageReadOnly, None, "is read-only"),
    ]
    for error, kind, storage, words in cases:
        failure = classify(error, storage)
        assert type(failure) is kind and words in str(failure), (error, failure)
    # safetensors says it in words: a file's failure still, named by where it was written
    serializing = Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    failure = classify(serializing, "sqlite:///s.db", where="out/x.safetensors")
    assert type(failure) is DiskFull and str(failure).startswith("the disk is full writing out/x.safetensors")

    class PgError(Exception):  # what psycopg raises: an SQLSTATE on the error
        def __init__(self, text: str, sqlstate: str) -> None:
            super().__init__(text)
            self.sqlstate = sqlstate

    def wrapped(inner: Exception) -> Exception:  # as SQLAlchemy, then Optuna, wrap it
        try:
            try:
                raise inner
            except Exception as e:
                raise RuntimeError("(psycopg.errors.X) ...") from e
        except Exception as e:
            return e

    full = classify(wrapped(PgError('could not extend file "base/1/2": No space left on device', "53100")), url)
    assert type(full) is DiskFull and "me:***@db.example" in str(full) and "secret" not in str(full)
    standby = classify(wrapped(PgError("cannot execute INSERT in a read-only transaction", "25006")), url)
    assert type(standby) is StorageReadOnly and "standby" in str(standby)
    gone = classify(wrapped(PgError("server closed the connection unexpectedly", "08006")), url)
    assert type(gone) is StorageUnavailable and "run the same command again" in str(gone)
    assert classify(ValueError("a bug")) is None and classify(OSError(errno.ENOENT, "No such file")) is None


def test_a_full_disk_under_an_old_study_is_one_line_and_leaves_it_as_it_was(capsys, monkeypatch, tmpfs):
    """The fixture's 'partial' study resumed with its recorded command on a file system with no space left."""
    needed = sum(p.stat().st_size for p in FIXTURE.iterdir()) // 1024
    folder = tmpfs(needed + 256)
    for path in FIXTURE.iterdir():
        shutil.copy(path, folder / path.name)
        (folder / path.name).chmod(0o644)
    fill(folder)
    before = _digest(folder)
    monkeypatch.chdir(folder)
    recorded = optuna.load_study(study_name="partial", storage="sqlite:///studies.db").user_attrs["command"]
    code, _, err = run_cli(capsys, *shlex.split(recorded)[1:])
    assert code == DiskFull.exit_code, err
    assert_one_line_error(err, "full", "free space")
    assert _digest(folder) == before
