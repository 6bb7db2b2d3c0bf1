"""Storage under load (issue 14): many workers on one PostgreSQL study, directly and through a storage server.

Each run fills a fresh study (a unique name, deleted afterwards) with the fastest
objective there is, the zero-cost ``params`` score, over the whole space or a
``--restrict`` slice of it:

  proxynas score --metrics params --dataset digits --workers N --storage URL

``direct`` gives the workers the PostgreSQL URL; ``grpc`` starts ``proxynas storage-server``
on it and gives them ``grpc://127.0.0.1:PORT``, so that only the server connects. While it
runs, a sampler thread counts the connections PostgreSQL holds for the run every 0.1 s
(``pg_stat_activity``: every URL the run hands out names a fresh ``application_name``, so
other clients of the database are not counted). Printed
per run: trials complete, duplicate and missing configuration ids (exactly once: N, 0, 0),
the wall time of the command, trials per second (from the first trial's start to the last
completion) and the peak connections held.

  nice -n 10 python bench/storage_load.py --workers 16 direct grpc
  nice -n 10 python bench/storage_load.py --workers 4 --restrict 'depth=1;width=32' direct grpc
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import optuna
import psycopg
import sqlalchemy

from proxynas.nas.search_space import load_space
from proxynas.nas.study import CONFIG_KEY, open_grpc_storage

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PROXYNAS = [sys.executable, "-m", "proxynas"]


@dataclass
class LoadResult:
    mode: str  # "direct" or "grpc"
    workers: int
    configurations: int  # in the space (or slice) searched
    complete: int  # COMPLETE trials
    duplicates: int  # COMPLETE trials beyond the first of their configuration id
    missing: int  # configuration ids with no COMPLETE trial
    wall_s: float  # the score command, start to exit (spawning the workers included)
    trials_per_s: float  # COMPLETE trials / (last completion - first start)
    peak_connections: int  # most connections PostgreSQL held for the database at once

    @property
    def exactly_once(self) -> bool:
        return self.complete == self.configurations and self.duplicates == 0 and self.missing == 0


def tagged(db_url: str, application_name: str) -> str:
    """``db_url`` with connections that name themselves ``application_name`` in ``pg_stat_activity``."""
    url = sqlalchemy.engine.make_url(db_url).update_query_dict({"application_name": application_name})
    return url.render_as_string(hide_password=False)


class ConnectionSampler:
    """Peak number of connections PostgreSQL holds for ``tagged`` URLs of one application name, in a thread."""

    def __init__(self, db_url: str, application_name: str, every: float = 0.1) -> None:
        url = sqlalchemy.engine.make_url(db_url).set(drivername="postgresql", query={})
        self._dsn = url.render_as_string(hide_password=False)
        self._name, self._every, self._stop, self.peak = application_name, every, threading.Event(), 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="pg-connections")

    def _run(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                (n,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (self._name,)
                ).fetchone()
                self.peak = max(self.peak, n)
                self._stop.wait(self._every)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def storage_server(db_url: str, *, threads: int = 8, heartbeat: int = 10, grace: int = 60) -> Iterator[str]:
    """A ``proxynas storage-server`` subprocess on ``db_url``; yields its grpc:// address once it answers."""
    port = free_port()
    proc = subprocess.Popen(
        [
            *PROXYNAS,
            "storage-server",
            "--storage",
            db_url,
            "--port",
            str(port),
            "--threads",
            str(threads),
            "--heartbeat",
            str(heartbeat),
            "--grace",
            str(grace),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    address = f"grpc://127.0.0.1:{port}"
    try:
        open_grpc_storage(address, wait=60).close()
        yield address
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        if proc.returncode not in (0, 143, -15):  # our own SIGTERM, handled (143) or not (-15)
            raise RuntimeError(f"storage server exited with {proc.returncode}: {err.strip()}")


def count_once(db_url: str, study: str, ids: set[str]) -> tuple[int, int, int, float]:
    """(complete, duplicates, missing, trials per second) of a finished study."""
    trials = optuna.load_study(study_name=study, storage=db_url).get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
    )
    per_id = collections.Counter(t.user_attrs.get(CONFIG_KEY) for t in trials)
    duplicates = sum(n - 1 for n in per_id.values())
    missing = len(ids - set(per_id))
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return len(trials), duplicates, missing, len(trials) / span if span > 0 else float("nan")


def run_load(
    mode: str, workers: int, *, db_url: str = DEFAULT_DB, restrict: str | None = None, threads: int = 8
) -> LoadResult:
    """One load run (``mode`` "direct" or "grpc"); the study is deleted afterwards."""
    space = load_space(None)
    ids = {c.id for c in (space.restrict(restrict) if restrict else space).configs()}
    prefix = f"load-{uuid.uuid4().hex[:8]}-"
    study, watched = prefix + "params", tagged(db_url, prefix + mode)
    argv = [
        "score",
        "--metrics",
        "params",
        "--dataset",
        "digits",
        "--study-prefix",
        prefix,
        "--workers",
        str(workers),
        "--device",
        "cpu",
        "--quiet",
        *(["--restrict", restrict] if restrict else []),
    ]
    server = storage_server(watched, threads=threads) if mode == "grpc" else contextlib.nullcontext(watched)
    try:
        with server as url, ConnectionSampler(db_url, prefix + mode) as sampler:
            start = time.perf_counter()
            done = subprocess.run([*PROXYNAS, *argv, "--storage", url], capture_output=True, text=True)
            wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"proxynas score exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
        complete, duplicates, missing, rate = count_once(db_url, study, ids)
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=study, storage=db_url)
    return LoadResult(
        mode, workers, len(ids), complete, duplicates, missing, round(wall, 1), round(rate, 2), sampler.peak
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("modes", nargs="+", choices=("direct", "grpc"))
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--restrict", help="a slice of the space (default: all 720 configurations)")
    p.add_argument("--db", default=DEFAULT_DB, help="a PostgreSQL URL")
    p.add_argument("--threads", type=int, default=8, help="the storage server's threads (grpc)")
    p.add_argument("--json", action="store_true", help="one JSON object per run instead of a table row")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}, {os.cpu_count()} CPUs, optuna {optuna.__version__}",
        flush=True,
    )
    for mode in args.modes:
        r = run_load(mode, args.workers, db_url=args.db, restrict=args.restrict, threads=args.threads)
        if args.json:
            print(json.dumps({**asdict(r), "exactly_once": r.exactly_once}), flush=True)
        else:
            print(
                f"{r.mode:6} workers {r.workers}: {r.complete}/{r.configurations} complete, {r.duplicates} "
                f"duplicate, {r.missing} missing | {r.wall_s} s, {r.trials_per_s} trials/s | peak "
                f"{r.peak_connections} PostgreSQL connections",
                flush=True,
            )


if __name__ == "__main__":
    main()
