"""Every wrong input, signal and failure ends cleanly (issue 14).

Bad input: one line naming the problem and the fix, a non-zero exit, no traceback, and
the study already recorded byte-identical afterwards. Signals: SIGTERM is handled as
Ctrl-C (running trials re-queued at once, exit 143), and no worker outlives its parent.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from PIL import Image
from safetensors.torch import save_file

from proxynas.core.condense import CondenseConfig, SyntheticSet, condense
from proxynas.core.data import load_dataset
from proxynas.core.proxy_set import FORMAT
from proxynas.core.train import TrainConfig
from proxynas.exceptions import ArtifactError, DatasetError, StorageReadOnly, StudyError, UsageError
from proxynas.nas.search import Prepared, SearchConfig, _check_outcome, run_search
from proxynas.nas.study import CONFIG_KEY, open_storage, open_study, run_worker
from tests.conftest import TINY_SPACE, assert_one_line_error, ctrl_c_default, remount_read_only, run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    """A digits proxy set, a 4-configuration space, and a study that completed it once."""
    base = tmp_path_factory.mktemp("reliability")
    proxy = base / "digits-random.safetensors"
    condense(
        CondenseConfig(dataset="digits", method="random", ipc=2, val_fraction=0.1),
        proxy,
        dataset=load_dataset("digits"),
    )
    space = base / "tiny.toml"
    space.write_text(TINY_SPACE)
    db = base / "study" / "db.sqlite"
    run_search(
        SearchConfig(
            proxy=str(proxy),
            study="s",
            storage=f"sqlite:///{db}",
            space=str(space),
            train=TrainConfig(epochs=1, batch_size=250),
            repeats=1,
            device="cpu",
        )
    )
    return SimpleNamespace(proxy=proxy, space=space, db=db)


@pytest.fixture
def study(files, tmp_path) -> Path:
    """A copy of the completed study's database, alone in its folder."""
    db = tmp_path / "study" / "db.sqlite"
    db.parent.mkdir()
    shutil.copy(files.db, db)
    return db


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the sha256 of its bytes: a study 'byte-identical afterwards'."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _folder_data(root: Path, size: int, seed: int) -> Path:
    """An ImageFolder tree: 3 classes of 8 train and 4 test RGB images of ``size`` x ``size``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", 8), ("test", 4)):
        for cls in ("a", "b", "c"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                    root / split / cls / f"{i}.png"
                )
    return root


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory) -> SimpleNamespace:
    """A proxy set of folder data, that data, data of another shape, and other images of the same shape."""
    base = tmp_path_factory.mktemp("folders")
    own = _folder_data(base / "own", 16, seed=0)
    proxy = base / "own.safetensors"
    condense(CondenseConfig(dataset="folder", data_path=str(own), method="random", ipc=2, val_fraction=0.25), proxy)
    return SimpleNamespace(
        proxy=proxy,
        own=own,
        smaller=_folder_data(base / "smaller", 8, seed=0),
        other=_folder_data(base / "other", 16, seed=1),
    )


# (command, flags, exit code, fragments of the one line); every case runs against an existing study
BAD_STUDY_INPUT = [
    ("search", ["--dsa-strategy", "bogus"], 2, ["unknown DSA family 'bogus'", "choose from: color"]),
    ("search", ["--batch-size", "0"], 2, ["--batch-size must be at least 1 (got 0)"]),
    ("search", ["--lr", "-1"], 2, ["--lr must be a positive number (got -1.0)"]),
    ("search", ["--epochs", "0"], 2, ["--epochs must be at least 1 (got 0)", "untrained"]),
    ("search", ["--epochs", "-1"], 2, ["--epochs must be at least 1 (got -1)"]),
    ("search", ["--workers", "0"], 2, ["--workers must be at least 1"]),
    ("search", ["--workers", "-2"], 2, ["--workers must be at least 1"]),
    ("search", ["--sampler", "tpe", "--n-trials", "0"], 2, ["--n-trials must be at least 1 (got 0)"]),
    ("search", ["--sampler", "tpe", "--timeout", "-5"], 2, ["--timeout must be a positive number", "-5"]),
    ("search", ["--restrict", ""], 2, ["--restrict '' selects nothing"]),
    ("search", ["--grace", "5"], 2, ["--grace 5 must be at least twice --heartbeat 10"]),
    ("search", ["--heartbeat", "0"], 2, ["--heartbeat and --grace must be at least 1 second"]),
    ("search", ["--device", "cuda"], 2, ["--device cuda asked for, but torch sees no CUDA GPU"]),
    ("baseline", ["--kind", "whole", "--exclude-split", "0"], 2, ["--exclude-split must be in (0, 1)"]),
    ("baseline", ["--kind", "early-stop", "--steps", "-3"], 2, ["--steps must be at least 1 (got -3)"]),
    ("score", ["--batch-size", "0"], 2, ["--batch-size must be at least 1 (got 0)"]),
    ("score", ["--batch-size", "100000"], 2, ["--batch-size 100000 must be in 1..", "training split's size"]),
]


@pytest.mark.parametrize(
    "command,flags,code,fragments", BAD_STUDY_INPUT, ids=[f"{c} {' '.join(f)}" for c, f, _, _ in BAD_STUDY_INPUT]
)
def test_bad_options_are_refused_before_the_study_is_touched(
    capsys, monkeypatch, files, study, command, flags, code, fragments
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    source = {
        "search": ["--proxy", files.proxy, "--study", "s", "--repeats", "1", "--epochs", "1"],
        "baseline": ["--dataset", "digits", "--study", "s", "--repeats", "1"],
        "score": ["--dataset", "digits", "--metrics", "params"],
    }[command]
    before = snapshot(study.parent)
    got, _, err = run_cli(
        capsys, command, *source, "--storage", f"sqlite:///{study}", "--space", files.space, *flags, "--quiet"
    )
    assert got == code
    assert_one_line_error(err, *fragments)
    assert snapshot(study.parent) == before


@pytest.mark.parametrize(
    "data,fragments",
    [
        ("smaller", ["was condensed from folder data of 3x16x16 images in 3 classes", "has 3x8x8 in 3", "--data-path"]),
        ("other", ["was condensed from other images than those in", "data fingerprint", "--data-path"]),
    ],
)
def test_data_other_than_the_proxy_sets_is_refused(capsys, files, folder_data, study, data, fragments):
    path = getattr(folder_data, data)
    code, _, err = run_cli(capsys, "evaluate", folder_data.proxy, "--data-path", path, "--epochs", "1", "--quiet")
    assert code == DatasetError.exit_code
    assert_one_line_error(err, *fragments)
    assert not list(folder_data.proxy.parent.glob("*.eval-*.json"))
    before = snapshot(study.parent)  # search checks before it opens the study, so no trial can fail on it
    code, _, err = run_cli(
        capsys,
        "search",
        "--proxy",
        folder_data.proxy,
        "--data-path",
        path,
        "--study",
        "s",
        "--storage",
        f"sqlite:///{study}",
        "--space",
        files.space,
        "--quiet",
    )
    assert code == DatasetError.exit_code
    assert_one_line_error(err, *fragments)
    assert snapshot(study.parent) == before


def test_the_proxy_sets_own_data_under_another_path_is_accepted(folder_data, tmp_path):
    moved = shutil.copytree(folder_data.own, tmp_path / "moved")
    syn = SyntheticSet.load(folder_data.proxy)
    assert syn.meta["dataset"]["fingerprint"]
    syn.check_data(load_dataset("folder", moved), folder_data.proxy)  # same images elsewhere: same fingerprint


def _proxy_with_meta(path: Path, meta: str) -> Path:
    save_file(
        {"images": torch.zeros(2, 1, 32, 32), "labels": torch.zeros(2, dtype=torch.long)},
        str(path),
        metadata={"format": FORMAT, "meta": meta},
    )
    return path


@pytest.mark.parametrize(
    "meta,fragment",
    [
        ("", "no readable metadata"),
        ("{broken", "no readable metadata"),
        ("[]", "its metadata is not a record"),
        ("{}", "its metadata lacks dataset"),
        (
            json.dumps(
                {
                    "dataset": {"name": "digits"},
                    "method": "dm",
                    "ipc": 1,
                    "model": "ConvNet",
                    "classes": [0],
                    "config": {},
                }
            ),
            "its metadata lacks dataset.channels",
        ),
    ],
)
def test_a_proxynas_header_with_broken_metadata_is_one_line(capsys, files, tmp_path, meta, fragment):
    broken = _proxy_with_meta(tmp_path / "broken.safetensors", meta)
    code, _, err = run_cli(capsys, "evaluate", broken, "--quiet")
    assert code == ArtifactError.exit_code
    assert_one_line_error(err, str(broken), "has a proxynas header but", fragment, "proxynas condense")
    code, _, err = run_cli(capsys, "condense", "merge", broken, files.proxy, "--out", tmp_path / "merged.safetensors")
    assert code == ArtifactError.exit_code
    assert_one_line_error(err, fragment)
    assert not (tmp_path / "merged.safetensors").exists()


def test_evaluate_refuses_zero_networks_and_an_unwritable_result_before_training(capsys, files, tmp_path):
    proxy = Path(shutil.copy(files.proxy, tmp_path / "p.safetensors"))
    code, _, err = run_cli(capsys, "evaluate", proxy, "--num-nets", "0", "--quiet")
    assert code == UsageError.exit_code
    assert_one_line_error(err, "--num-nets must be at least 1 (got 0)")
    model = SyntheticSet.load(proxy).meta["model"]
    (tmp_path / f"p.eval-{model}.json").mkdir()  # where the result goes is a folder
    started = time.perf_counter()
    code, _, err = run_cli(capsys, "evaluate", proxy, "--epochs", "100000", "--quiet", "--device", "cpu")
    assert code == UsageError.exit_code and time.perf_counter() - started < 5  # refused, not trained first
    assert_one_line_error(err, f"p.eval-{model}.json is a folder")


UNWRITABLE = Path("/proc/proxynas-test")  # not writable even by root, unlike a chmod 555 folder


@pytest.mark.parametrize(
    "argv,fragments",
    [
        (
            [
                "condense",
                "--dataset",
                "digits",
                "--method",
                "random",
                "--ipc",
                "1",
                "--out",
                UNWRITABLE / "x.safetensors",
            ],
            ["--out /proc/proxynas-test/x.safetensors: /proc is not writable"],
        ),
        (["condense", "merge", "{proxy}", "--out", UNWRITABLE / "m.safetensors"], ["/proc is not writable"]),
        (
            [
                "report",
                "--storage",
                "sqlite:///{db}",
                "--proxy-studies",
                "s",
                "--whole",
                "s",
                "--out-dir",
                UNWRITABLE / "r",
            ],
            ["--out-dir /proc/proxynas-test/r: /proc is not writable"],
        ),
        (
            ["report", "--storage", "sqlite:///{db}", "--proxy-studies", "s", "--whole", "s", "--out-dir", "{proxy}"],
            ["is a file, and a folder is written there"],
        ),
        (
            ["dashboard", "--storage", "sqlite:///{db}", "--port", "99999"],
            ["--port 99999 is not a TCP port", "1..65535"],
        ),
    ],
)
def test_outputs_are_checked_before_the_work(capsys, files, study, argv, fragments):
    argv = [str(a).format(proxy=files.proxy, db=study) for a in argv]
    before = snapshot(study.parent)
    code, _, err = run_cli(capsys, *argv)
    assert code == UsageError.exit_code
    assert_one_line_error(err, *fragments)
    assert snapshot(study.parent) == before


def test_a_port_in_use_is_refused(capsys, study):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_cli(capsys, "dashboard", "--storage", f"sqlite:///{study}", "--port", port)
    assert code == UsageError.exit_code
    assert_one_line_error(err, f"cannot listen on 127.0.0.1:{port}", "choose another --port or --host")


@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_condense_into_a_folder_says_so_with_or_without_resume(capsys, tmp_path, resume):
    code, _, err = run_cli(
        capsys,
        "condense",
        "--dataset",
        "digits",
        "--method",
        "random",
        "--ipc",
        "1",
        "--out",
        tmp_path,
        "--quiet",
        *resume,
    )
    assert code == UsageError.exit_code
    assert_one_line_error(err, f"--out {tmp_path} is a folder; pass a file path")
    assert not list(tmp_path.iterdir())


def test_a_non_utf8_out_is_refused(capsys, tmp_path):
    out = os.fsdecode(bytes(tmp_path) + b"/\xff.safetensors")
    code, _, err = run_cli(
        capsys, "condense", "--dataset", "digits", "--method", "random", "--ipc", "1", "--out", out, "--quiet"
    )
    assert code == UsageError.exit_code
    assert_one_line_error(err, "is not valid UTF-8")
    assert not list(tmp_path.iterdir())


def _search_in(capsys, files, db: Path) -> tuple[int, str, str]:
    return run_cli(
        capsys,
        "search",
        "--proxy",
        files.proxy,
        "--study",
        "s",
        "--storage",
        f"sqlite:///{db}",
        "--space",
        files.space,
        "--quiet",
    )


@pytest.mark.parametrize(
    "where,fragments",
    [
        ("file/db.sqlite", ["is a file, not a folder"]),
        (str(UNWRITABLE / "db.sqlite"), ["cannot be written", "copy the database into a writable folder"]),
    ],
)
def test_an_sqlite_url_that_cannot_be_written_is_one_line(capsys, files, tmp_path, where, fragments):
    (tmp_path / "file").write_text("not a folder")
    before = snapshot(tmp_path)
    code, _, err = _search_in(capsys, files, tmp_path / where)
    assert code == (StorageReadOnly if "cannot be written" in fragments else StudyError).exit_code
    assert_one_line_error(err, *fragments)
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder (the read-only mount case runs)")
def test_an_existing_database_in_a_read_only_folder_is_one_line(capsys, files, study):
    before = snapshot(study.parent)
    study.parent.chmod(0o555)
    try:
        code, _, err = _search_in(capsys, files, study)
    finally:
        study.parent.chmod(0o755)
    assert code == StorageReadOnly.exit_code
    assert_one_line_error(err, "cannot be written")
    assert snapshot(study.parent) == before


def test_an_existing_database_on_a_read_only_file_system_is_one_line(capsys, files, tmpfs):
    folder = tmpfs(4 * 1024)
    shutil.copy(files.db, folder / "db.sqlite")
    remount_read_only(folder)
    before = snapshot(folder)
    code, _, err = _search_in(capsys, files, folder / "db.sqlite")
    assert code == StorageReadOnly.exit_code, err
    assert_one_line_error(err, "cannot be written")
    assert snapshot(folder) == before


def test_a_worker_error_comes_back_as_one_line(capfd, monkeypatch, files, tmp_path):
    """The parent checked everything; the proxy set then vanishes before the worker reads it."""
    import proxynas.nas.search as search

    proxy = Path(shutil.copy(files.proxy, tmp_path / "p.safetensors"))
    prepare = search.prepare

    def prepare_then_lose_the_proxy(cfg, loaded=None):
        prepared = prepare(cfg, loaded)
        proxy.unlink()
        return prepared

    monkeypatch.setattr(search, "prepare", prepare_then_lose_the_proxy)
    code, _, err = run_cli(
        capfd,
        "search",
        "--proxy",
        proxy,
        "--study",
        "s",
        "--storage",
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        "--space",
        files.space,
        "--epochs",
        "1",
        "--repeats",
        "1",
        "--device",
        "cpu",
        "--quiet",
    )
    assert code == StudyError.exit_code
    err = "\n".join(line for line in err.splitlines() if not line.startswith("20"))  # --quiet's progress lines
    assert_one_line_error(err, "worker 0 failed:", "p.safetensors does not exist", "0 of 4 configurations complete")


def _failing_study(folder: Path, fail: set[str]) -> Prepared:
    """A study of configurations a, b, c where those in ``fail`` raise, run by one in-process worker."""
    folder.mkdir()
    storage = open_storage(f"sqlite:///{folder / 'db.sqlite'}")
    study = open_study(storage, "f")
    for cid in "abc":
        study.enqueue_trial({"x": ord(cid)}, user_attrs={CONFIG_KEY: cid})

    def objective(trial):
        trial.suggest_int("x", 0, 200)
        if trial.user_attrs[CONFIG_KEY] in fail:
            raise ValueError(f"no good: {trial.user_attrs[CONFIG_KEY]}")
        return 1.0

    run_worker(study, objective, queue_only=True)
    return Prepared(storage, study, None, None, total=3)


def test_a_run_in_which_no_trial_completed_fails_with_the_first_error(tmp_path):
    p = _failing_study(tmp_path / "all", fail=set("abc"))
    worker = SimpleNamespace(name="proxynas-worker-0", exitcode=0)
    with pytest.raises(
        StudyError,
        match=r"^no trial completed: trial 0 \(a\) failed with ValueError: no good: a "
        r"\(3 failed; study 'f' has 0 of 3 configurations complete, 3 left\)",
    ):
        _check_outcome(p, [worker], {}, before={})
    # a run that completed something is a success: the failures are retried by the next run
    _check_outcome(_failing_study(tmp_path / "some", fail={"a"}), [worker], {}, before={})


def test_a_killed_worker_is_reported_with_the_studys_true_state(tmp_path, caplog):
    p = _failing_study(tmp_path / "some", fail={"c"})
    before = {t.number: t.state for t in p.study.get_trials()}  # nothing new in this "run"
    killed = SimpleNamespace(name="proxynas-worker-1", exitcode=-signal.SIGKILL)
    with pytest.raises(
        StudyError,
        match=r"ended early \(proxynas-worker-1: killed by signal 9\); study 'f' has 2 "
        r"of 3 configurations complete, 1 left: run the same command again",
    ):
        _check_outcome(p, [killed], {}, before)
    # complete after all: nothing to run again, so a warning only
    _check_outcome(_failing_study(tmp_path / "done", fail=set()), [killed], {}, before={})
    assert "study 'f' is complete (3 of 3 configurations); nothing is left to run" in caplog.text


# --- signals -----------------------------------------------------------------------------------------------------

_PARENT = textwrap.dedent("""
    import multiprocessing, os, sys, time
    from proxynas.runtime import processes
    from proxynas.exceptions import Terminated

    def worker(parent_pid, marker):
        try:
            processes.worker_init(parent_pid)
            open(marker + ".ready", "w").close()
            while True:
                time.sleep(0.05)
        except Terminated:
            open(marker, "w").write("cleaned up")
            raise SystemExit(143)

    if __name__ == "__main__":
        proc = multiprocessing.get_context("spawn").Process(target=worker, args=(os.getpid(), sys.argv[1]))
        processes.start([proc])
        print(proc.pid, flush=True)
        time.sleep(600)
""")


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for a reaper that a container may lack)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_worker_cleans_up_and_exits_when_its_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    marker = tmp_path / "worker"
    parent = subprocess.Popen(
        [sys.executable, str(script), str(marker)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    child = int(parent.stdout.readline())
    deadline = time.time() + 60
    while not Path(f"{marker}.ready").exists() and time.time() < deadline:
        time.sleep(0.05)
    parent.kill()  # SIGKILL: the parent runs no clean-up of its own
    parent.wait()
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the worker outlived its parent"
    assert marker.read_text() == "cleaned up"


def _search_argv(files, db: Path, workers: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "proxynas",
        "search",
        "--proxy",
        str(files.proxy),
        "--study",
        "s",
        "--storage",
        f"sqlite:///{db}",
        "--space",
        str(files.space),
        "--epochs",
        "400",
        "--repeats",
        "1",
        "--device",
        "cpu",
        "--workers",
        str(workers),
        "--heartbeat",
        "1",
        "--grace",
        "30",
        "--quiet",
    ]


def _start_search(files, db: Path) -> tuple[subprocess.Popen, list[int]]:
    """A search in its own session, once both workers run a trial; with the workers' pids."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _search_argv(files, db),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=ctrl_c_default,
    )
    deadline, running = time.time() + 120, 0
    while time.time() < deadline and running < 2:
        time.sleep(0.2)
        try:  # read the table directly: the poller must not race the workers to create the schema
            with sqlite3.connect(db, timeout=30) as conn:
                running = conn.execute("SELECT count(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
        except sqlite3.OperationalError:
            pass
    assert running == 2, "the workers did not start trials in time"
    children = [
        int(line.split()[0])
        for line in subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
    ]
    return proc, children


def _states(db: Path) -> collections.Counter:
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{db}").get_trials()
    return collections.Counter(t.state for t in trials)


def _completes_once(files, db: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run(_search_argv(files, db), env=env, check=True, capture_output=True, timeout=600)
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{db}").get_trials()
    counts = collections.Counter(t.user_attrs[CONFIG_KEY] for t in trials if t.state == TrialState.COMPLETE)
    assert len(counts) == 4 and set(counts.values()) == {1}, counts


@pytest.mark.slow
@pytest.mark.parametrize("how,code", [("SIGTERM to the parent", 143), ("Ctrl-C in the terminal", 130)])
def test_sigterm_and_ctrl_c_requeue_running_trials_at_once(files, tmp_path, how, code):
    db = tmp_path / "db.sqlite"
    proc, workers = _start_search(files, db)
    started = time.time()
    if how == "SIGTERM to the parent":  # Kubernetes signals PID 1 only; the parent passes it on
        proc.send_signal(signal.SIGTERM)
    else:  # a terminal signals the whole foreground process group
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code
    assert time.time() - started < 60  # not after the 30 s grace period of each trial
    assert "Traceback" not in err and "--resume" not in err
    assert err.strip().splitlines()[-1] == (
        "interrupted; the running trials were re-queued: run the same command again to continue the study"
    )
    assert not any(_alive(pid) for pid in workers)
    states = _states(db)
    assert states[TrialState.RUNNING] == 0 and states[TrialState.FAIL] == 2 and states[TrialState.WAITING] == 4
    _completes_once(files, db)


@pytest.mark.slow
def test_killing_the_parent_stops_its_workers_and_the_study_resumes_exactly_once(files, tmp_path):
    db = tmp_path / "db.sqlite"
    proc, workers = _start_search(files, db)
    proc.kill()  # kill -9 of the parent alone
    proc.wait()
    deadline = time.time() + 30
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "workers outlived their parent"
    states = _states(db)  # the workers re-queued their trials on the way out, not after the grace period
    assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 4
    _completes_once(files, db)
