"""A soak test with faults (issue 21): searches survive kill -9, SIGTERM and storage restarts, exactly once.

A private PostgreSQL (``initdb`` under a temp folder, a free port) behind a private
``proxynas storage-server``, and one study of 48 configurations (a 1-depth slice of ConvNets,
10 epochs on a 50-image digits proxy set: about a second each) searched by 4 workers:

  proxynas search --storage grpc://127.0.0.1:PORT --workers 4 --heartbeat 1 --grace 30 ...

For ``--minutes``, a fault every 2-8 s, its kind drawn (``--seed``) from a shuffled round of all five
first, so that even a short soak injects each kind, then at random (``FaultSchedule``):

- ``worker``: kill -9 of one worker (its trial is re-queued once the server's grace lapses);
- ``launcher``: kill -9 of the search command (its workers re-queue their trials), then a re-run;
- ``storage-server``: kill -9 of the storage server, restarted 1-5 s later on the same port;
- ``sigterm``: SIGTERM to the search command (exit 143, trials re-queued), then a re-run;
- ``postgres``: PostgreSQL stopped (fast or immediate, as a crash), started again 0.5-3 s later.

A search command that ends is run again until its study is complete; a complete study starts
the next one (``soak-0``, ``soak-1``, ...). When the time is up the current study is searched
to completion without faults. Then each study is checked: every configuration COMPLETE exactly
once, with the value of a fault-free run of the same study (same seeds, SQLite, 2 workers).
Printed: the faults injected by kind, the search commands run and how each ended, and per
run configurations, duplicates, missing and mismatches; the exit status is non-zero on any
duplicate, missing configuration, mismatch, traceback or unexplained exit of a command, and on
a kind of fault never injected. Without PostgreSQL's server binaries the soak is skipped (exit 0),
or with ``--require-postgres`` fails (exit 1), in one line.

  python -m bench.soak --minutes 1 --require-postgres   # the short version .ci/run runs (about 2 minutes on 2 cores)
  python -m bench.soak --minutes 15 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bench.storage_load import PROXYNAS, free_port
from proxynas.nas.study import CONFIG_KEY, open_grpc_storage

SPACE = """
name = "soak48"
[axes]
depth = [1]
width = [8, 16]
act = ["sigmoid", "relu", "leakyrelu"]
norm = ["none", "instancenorm", "layernorm", "groupnorm"]
pool = ["max", "avg"]
"""
CONFIGURATIONS = 48
WORKERS = 4
SERVER_GRACE = 20  # s: a killed worker's trial is re-queued this long after its last heartbeat
CLIENT_GRACE = 30  # s: how long a search command waits out an outage (its --grace)
FAULT_EVERY = (2.0, 8.0)  # s between faults, uniform
FAULTS = ("worker", "launcher", "storage-server", "sigterm", "postgres")
# What a search command may end with other than 0, the fault injected into it that explains it, and the
# words of its last line: SIGTERM before Python installed its handler ends it with -15; a killed worker
# leaves its study incomplete; a command started just before a storage-server fault finds no server.
EXPLAINED = {
    (143, "sigterm", ""),
    (-signal.SIGTERM, "sigterm", ""),
    (-signal.SIGKILL, "launcher", ""),
    (7, "worker", "worker(s) ended early"),
    (8, "storage-server", "did not answer for"),  # a restart that outlasted the command's --grace
}


# --- a private PostgreSQL ----------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder with initdb and pg_ctl, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def postgres_unavailable() -> str | None:
    """Why a private PostgreSQL cannot be started here (a reason to skip), or None."""
    if postgres_bin() is None:
        return "no initdb/pg_ctl (install PostgreSQL's server binaries)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, where initdb refuses to run, and there is no postgres user to run it as"
        if shutil.which("runuser") is None:
            return "running as root, where initdb refuses to run, and runuser is missing"
    return None


class PrivatePostgres:
    """A PostgreSQL cluster of its own under a temp folder, on a free port (trust authentication, no fsync).

    As root (where initdb refuses to run) its commands run as the ``postgres`` user.
    """

    def __init__(self) -> None:
        reason = postgres_unavailable()
        if reason is not None:
            raise RuntimeError(f"cannot start a private PostgreSQL: {reason}")
        self.bin = postgres_bin()
        self.root = Path(tempfile.mkdtemp(prefix="proxynas-pg-"))
        self.data, self.log = self.root / "data", self.root / "postgres.log"
        self.port = free_port()
        self._as = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self._as, str(self.bin / tool), *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-500:]}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -h 127.0.0.1 -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: sessions are ended cleanly; ``immediate``: a crash, recovered at the next start."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- a storage server that can be killed and restarted ------------------------------------------


class StorageServer:
    """``proxynas storage-server`` on ``db_url`` at a fixed port, so it can be killed and started again there."""

    def __init__(self, db_url: str, log: Path, *, heartbeat: int = 1, grace: int = SERVER_GRACE) -> None:
        self.db_url, self.log, self.heartbeat, self.grace = db_url, log, heartbeat, grace
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = ["storage-server", "--storage", self.db_url, "--port", str(self.port), "--threads", "8"]
        argv += ["--heartbeat", str(self.heartbeat), "--grace", str(self.grace)]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([*PROXYNAS, *argv], stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:  # the port may still be held for a moment by the server killed before
            try:
                open_grpc_storage(self.address, wait=2).close()
                return
            except Exception as e:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the storage server did not start (exit {self.proc.poll()}); see {self.log}"
                    ) from e

    def kill(self) -> None:
        """kill -9."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> StorageServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the study ---------------------------------------------------------------------------------


def make_inputs(folder: Path) -> tuple[Path, Path]:
    """The proxy set (digits, 5 random images per class) and the 48-configuration space file."""
    from proxynas.core.condense import CondenseConfig, condense
    from proxynas.core.data import load_dataset

    proxy, space = folder / "digits-random.safetensors", folder / "soak48.toml"
    condense(
        CondenseConfig(dataset="digits", method="random", ipc=5, val_fraction=0.1),
        proxy,
        dataset=load_dataset("digits"),
    )
    space.write_text(SPACE)
    return proxy, space


def search_argv(proxy: Path, space: Path, storage: str, study: str, workers: int = WORKERS) -> list[str]:
    return [
        *PROXYNAS,
        "search",
        "--proxy",
        str(proxy),
        "--space",
        str(space),
        "--study",
        study,
        "--storage",
        storage,
        "--epochs",
        "10",
        "--repeats",
        "1",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--workers",
        str(workers),
        "--heartbeat",
        "1",
        "--grace",
        str(CLIENT_GRACE),
        "--quiet",
    ]


def child_env() -> dict[str, str]:
    """One thread per process (4 workers share 2 cores; the same values in every run), this checkout first."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def trials(db_url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.RDBStorage(db_url)
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()


def values_by_config(db_url: str, study: str) -> dict[str, list[float]]:
    """Each configuration id's COMPLETE values (exactly once: one value each)."""
    found: dict[str, list[float]] = collections.defaultdict(list)
    for t in trials(db_url, study):
        if t.state == TrialState.COMPLETE:
            found[t.user_attrs[CONFIG_KEY]].append(t.value)
    return found


@dataclass
class Check:
    """One study checked against the fault-free run."""

    study: str
    configurations: int
    duplicates: int  # COMPLETE trials beyond the first of their configuration
    missing: int  # configurations without a COMPLETE trial
    mismatches: int  # configurations whose value differs from the fault-free run's

    @property
    def ok(self) -> bool:
        return self.configurations > 0 and self.duplicates == self.missing == self.mismatches == 0


def check(found: dict[str, list[float]], reference: dict[str, list[float]], study: str) -> Check:
    return Check(
        study,
        len(reference),
        sum(len(v) - 1 for v in found.values() if v),
        sum(1 for cid in reference if not found.get(cid)),
        sum(1 for cid, v in found.items() if v and reference.get(cid, [None])[0] != v[0]),
    )


# --- faults ------------------------------------------------------------------------------------


@dataclass
class Soak:
    """The running soak: the storage, the search command of the moment, and what happened so far."""

    postgres: PrivatePostgres
    server: StorageServer
    argv: Callable[[str], list[str]]  # a study name -> its search command
    logs: Path
    rng: random.Random
    study: str = "soak-0"
    studies: list[str] = field(default_factory=list)
    launcher: subprocess.Popen | None = None
    runs: int = 0
    faults: collections.Counter = field(default_factory=collections.Counter)
    endings: collections.Counter = field(default_factory=collections.Counter)
    unexplained: list[str] = field(default_factory=list)
    run_faults: set[str] = field(default_factory=set)  # the faults injected into the running command

    def launch(self) -> None:
        self.runs += 1
        log = self.logs / f"search-{self.runs}.log"
        with open(log, "w") as out:
            self.launcher = subprocess.Popen(
                self.argv(self.study), stdout=out, stderr=out, env=child_env(), start_new_session=True
            )
        if self.study not in self.studies:
            self.studies.append(self.study)
        self.run_faults = set()

    def workers(self) -> list[int]:
        """The running command's worker processes (not multiprocessing's resource tracker)."""
        assert self.launcher is not None
        ps = subprocess.run(
            ["ps", "-o", "pid=,args=", "--ppid", str(self.launcher.pid)], capture_output=True, text=True
        )
        return [int(line.split()[0]) for line in ps.stdout.splitlines() if "spawn_main" in line]

    def ended(self) -> int | None:
        """The running command's exit status once it ended (recorded, and checked against the faults), else None."""
        assert self.launcher is not None
        code = self.launcher.poll()
        if code is None:
            return None
        self.endings[code] += 1
        log = self.logs / f"search-{self.runs}.log"
        text = log.read_text()
        last = _last_line(text)
        if code != 0 and not any(c == code and f in self.run_faults and w in last for c, f, w in EXPLAINED):
            self.unexplained.append(f"run {self.runs} ({self.study}) ended with {code}: {last}")
        elif text.count("Traceback (most recent call last)") > self._cut_spawns(text):
            self.unexplained.append(f"run {self.runs} ({self.study}) printed a traceback; see {log}")
        return code

    def _cut_spawns(self, text: str) -> int:
        """Tracebacks of workers whose launcher was killed while it started them: multiprocessing's own,
        printed as a worker reads its start-up data from a pipe that closed, before any proxynas code runs."""
        return text.count("EOFError: Ran out of input") if "launcher" in self.run_faults else 0

    def complete(self) -> bool:
        return len(values_by_config(self.postgres.url, self.study)) == CONFIGURATIONS

    def stop_launcher(self, sig: int) -> None:
        assert self.launcher is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.launcher.pid, sig)
        self.launcher.wait(timeout=300)

    def inject(self, kind: str) -> bool:
        """One fault of ``kind``; False where it cannot be injected now (no worker running)."""
        target = ""
        if kind == "worker":
            pids = self.workers()
            if not pids:
                return False
            target = f" pid {(pid := self.rng.choice(pids))}"
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        elif kind in ("launcher", "sigterm"):
            pids = self.workers()
            self.stop_launcher(signal.SIGKILL if kind == "launcher" else signal.SIGTERM)
            _wait_gone(pids, 120)  # the workers re-queue their trials on the way out
        elif kind == "storage-server":
            self.server.kill()
            time.sleep(self.rng.uniform(1, 5))
            self.server.start()
        elif kind == "postgres":
            self.postgres.stop(self.rng.choice(("fast", "immediate")))
            time.sleep(self.rng.uniform(0.5, 3))
            self.postgres.start()
        self.faults[kind] += 1
        self.run_faults.add(kind)
        with open(self.logs / "faults.log", "a") as log:  # the timeline, to read beside the commands' logs
            log.write(f"{time.strftime('%H:%M:%S')} run {self.runs} ({self.study}): {kind}{target}\n")
        return True


class FaultSchedule:
    """The order in which to try the kinds of fault at each turn: a round of every kind first, in a seeded
    shuffle, then all kinds in a fresh shuffle each turn. A kind of the round that cannot be injected at its
    turn (``worker`` while no worker runs) stays first in line, and the next one is injected instead."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.round = rng.sample(FAULTS, len(FAULTS))  # the kinds of the first round not yet injected

    def turn(self) -> list[str]:
        """The kinds to try now, in order: the first that can be injected is."""
        rest = [kind for kind in FAULTS if kind not in self.round]
        self.rng.shuffle(rest)
        return [*self.round, *rest]

    def injected(self, kind: str) -> None:
        if kind in self.round:
            self.round.remove(kind)


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def run_with_faults(soak: Soak, minutes: float) -> None:
    """Faults (``FaultSchedule``) until ``minutes`` are up, then the study of the moment searched to completion."""
    deadline = time.monotonic() + 60 * minutes
    schedule = FaultSchedule(soak.rng)
    soak.launch()
    while time.monotonic() < deadline:
        time.sleep(soak.rng.uniform(*FAULT_EVERY))
        if not soak.server.alive():
            soak.unexplained.append(f"the storage server died by itself (exit {soak.server.proc.poll()})")
            soak.server.start()
        if soak.ended() is not None:
            if soak.complete():
                soak.study = f"soak-{len(soak.studies)}"
            soak.launch()
            continue
        kind = next((kind for kind in schedule.turn() if soak.inject(kind)), None)
        if kind is not None:
            schedule.injected(kind)
            if soak.launcher.poll() is not None:
                soak.ended()
                soak.launch()  # after a launcher fault: the re-run
    for _ in range(10):  # to completion, without faults
        assert soak.launcher is not None
        soak.launcher.wait()
        soak.ended()
        if soak.complete():
            return
        soak.launch()
    soak.unexplained.append(f"{soak.study} was not complete after 10 runs without faults")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=1.0, help="how long faults are injected")
    p.add_argument("--seed", type=int, default=0, help="seed of the faults' kinds and times")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (logs, proxy set) and say where")
    p.add_argument(
        "--require-postgres",
        action="store_true",
        help="fail (exit 1) where no private PostgreSQL can be started, instead of skipping (exit 0): for CI",
    )
    args = p.parse_args()
    reason = postgres_unavailable()
    if reason is not None:
        if args.require_postgres:
            print(f"soak: failed: {reason}, and --require-postgres was given", file=sys.stderr)
            return 1
        print(f"soak: skipped: {reason}", file=sys.stderr)
        return 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="proxynas-soak-"))
    started = time.time()
    print(
        f"# soak {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}, {os.cpu_count()} CPUs, "
        f"optuna {optuna.__version__}: {args.minutes:g} min of faults, seed {args.seed}, {WORKERS} workers, "
        f"{CONFIGURATIONS} configurations per study",
        flush=True,
    )
    try:
        proxy, space = make_inputs(folder)
        reference_db = f"sqlite:///{folder / 'reference.db'}"
        done = subprocess.run(
            search_argv(proxy, space, reference_db, "reference", workers=2),
            env=child_env(),
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            print(f"soak: the fault-free run failed ({done.returncode}): {_last_line(done.stderr)}", file=sys.stderr)
            return 1
        reference = values_by_config(reference_db, "reference")
        print(f"fault-free run: {len(reference)} configurations in {time.time() - started:.0f} s", flush=True)
        with PrivatePostgres() as pg, StorageServer(pg.url, folder / "storage-server.log") as server:
            soak = Soak(
                pg,
                server,
                lambda study: search_argv(proxy, space, server.address, study),
                folder,
                random.Random(args.seed),
            )
            try:
                run_with_faults(soak, args.minutes)
            finally:  # interrupted: no search command outlives the soak (its workers follow it)
                if soak.launcher is not None and soak.launcher.poll() is None:
                    soak.stop_launcher(signal.SIGKILL)
            checks = [check(values_by_config(pg.url, s), reference, s) for s in soak.studies]
        failed = report(soak, checks, reference)
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"total {time.time() - started:.0f} s", flush=True)
    return 1 if failed else 0


def report(soak: Soak, checks: list[Check], reference: dict[str, list[float]]) -> bool:
    """Print the figures; True if anything failed."""
    kinds = ", ".join(f"{k} {soak.faults[k]}" for k in FAULTS)
    print(f"faults injected: {kinds} (total {sum(soak.faults.values())})")
    missed = [k for k in FAULTS if not soak.faults[k]]
    if missed:  # the soak did not test what it says: too short a --minutes, or a kind that never found its target
        print(f"  never injected: {', '.join(missed)}  FAILED")
    endings = ", ".join(f"exit {code}: {n}" for code, n in sorted(soak.endings.items()))
    print(f"search commands run: {soak.runs} ({endings})")
    for c in checks:
        print(
            f"{c.study}: {c.configurations} configurations, {c.duplicates} duplicates, {c.missing} missing, "
            f"{c.mismatches} mismatches{'' if c.ok else '  FAILED'}"
        )
    totals = [sum(getattr(c, f) for c in checks) for f in ("configurations", "duplicates", "missing", "mismatches")]
    print(
        f"all {len(checks)} studies: {totals[0]} configurations, {totals[1]} duplicates, {totals[2]} missing, "
        f"{totals[3]} mismatches; {len(soak.unexplained)} unexplained endings"
    )
    for line in soak.unexplained:
        print(f"  unexplained: {line}")
    return not checks or not all(c.ok for c in checks) or bool(soak.unexplained) or bool(missed)


if __name__ == "__main__":
    sys.exit(main())
