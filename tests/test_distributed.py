"""``torchrun -m proxynas condense`` (and srun's tasks): ranks condense their classes, rank 0 writes
the set a single process writes (bitwise with InstanceNorm, to float tolerance with BatchNorm shared
over ranks), and a group restarted after a rank is killed resumes from the ranks' checkpoints."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from proxynas.core.condense import CondenseConfig, SyntheticSet, condense, condense_sharded
from proxynas.core.condense.distributed import (
    SLURM_PORTS,
    Ranks,
    condense_distributed,
    expand_nodelist,
    launch_environment,
    rank_device,
)
from proxynas.exceptions import UsageError
from tests.conftest import TINY_MODEL, assert_one_line_error, run_cli

BN_MODEL = "d2-w8-relu-batchnorm-avg"
FLAGS = ["--dataset", "digits", "--ipc", "2", "--real-batch-size", "16", "--exclude-split", "0.1", "--device", "cpu"]
# "auto" measures on each process, and the test process has more threads: what each run measures must not decide
FLAGS += ["--precision", "fp32", "--tune", "no"]


def _cfg(**kw) -> CondenseConfig:
    """The CondenseConfig FLAGS (and ``kw``) give the command line."""
    return CondenseConfig(
        **{
            "dataset": "digits",
            "ipc": 2,
            "batch_real": 16,
            "val_fraction": 0.1,
            "precision": "fp32",
            "tune": "no",
            **kw,
        }
    )


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The reference run with the threads torchrun gives each rank (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _torchrun(out: Path, *flags: str, restarts: int = 0) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    argv += ["--max-restarts", str(restarts), "-m", "proxynas", "condense", *FLAGS, *flags, "--out", str(out)]
    return subprocess.Popen(
        argv, env=env | {"OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 240) -> str:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output
    return output


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The worker process of ``rank`` among the launcher's children, by the RANK torchrun gave it."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
        if ppid == launcher and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


def test_ranks_come_from_torchruns_environment():
    assert Ranks.from_environment({"RANK": "1", "WORLD_SIZE": "2"}) is None  # no group without all four
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node0"}
    assert Ranks.from_environment(env) == Ranks(3, 4, 1, 0)
    assert Ranks.from_environment(env | {"TORCHELASTIC_RESTART_COUNT": "2"}) == Ranks(3, 4, 1, 2)
    with pytest.raises(UsageError, match="RANK is 'x', not an integer; launch with torchrun or srun"):
        Ranks.from_environment(env | {"RANK": "x"})


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("gpu5", ["gpu5"]),
        ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
        ("a[8-11]", ["a8", "a9", "a10", "a11"]),  # no padding written, none kept
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("r[1-2]-n[3,5]", ["r1-n3", "r1-n5", "r2-n3", "r2-n5"]),
        ("x1,y[2],z", ["x1", "y2", "z"]),
    ],
)
def test_slurm_node_lists_expand_as_scontrol_show_hostnames_does(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["", "node[01-03", "node]1", "node[3-1]", "node[a-b]", "a,,b", "n[1-]"])
def test_a_slurm_node_list_it_cannot_read_names_itself_and_the_fix(nodelist):
    with pytest.raises(UsageError, match="cannot read the SLURM node list .*set MASTER_ADDR"):
        expand_nodelist(nodelist)


SRUN_TASK = {  # what srun sets in task 3 of a 4-task step on gpu07 and gpu08 (the job also holds gpu09)
    "SLURM_PROCID": "3",
    "SLURM_NTASKS": "4",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_ID": "123456",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NODELIST": "gpu[07-08]",
    "SLURM_NODELIST": "cpu1,gpu[07-09]",
}


def test_an_srun_task_is_a_rank_in_torchruns_terms():
    group = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07", "MASTER_PORT": "23456"}
    assert launch_environment(SRUN_TASK) == group  # the port: 20000 + 123456 % 10000
    assert Ranks.from_environment(SRUN_TASK) == Ranks(3, 4, 1, 0)
    step_less = {k: v for k, v in SRUN_TASK.items() if k != "SLURM_STEP_NODELIST"}
    assert launch_environment(step_less) == group | {"MASTER_ADDR": "cpu1"}  # the job's first node
    chosen = {"MASTER_ADDR": "gpu07-ib", "MASTER_PORT": "4000"}
    assert launch_environment(SRUN_TASK | chosen) == group | chosen
    torchrun = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert launch_environment(SRUN_TASK | torchrun) == torchrun  # torchrun under srun: torchrun's ranks


@pytest.mark.parametrize(
    "env",
    [
        SRUN_TASK | {"SLURM_NTASKS": "1"},  # a one-task step is one process
        {k: v for k, v in SRUN_TASK.items() if k != "SLURM_STEP_ID"},  # the batch script, not a task srun started
        {k: v for k, v in SRUN_TASK.items() if not k.endswith("NODELIST")},
        SRUN_TASK | {"RANK": "0"},  # part of torchrun's variables: neither launcher's group
    ],
)
def test_no_group_without_a_task_of_an_srun_step_of_several(env):
    assert launch_environment(env) is None and Ranks.from_environment(env) is None


def test_an_srun_variable_that_is_no_integer_is_named():
    with pytest.raises(UsageError, match="SLURM_PROCID is 'x', not an integer; launch with torchrun or srun"):
        Ranks.from_environment(SRUN_TASK | {"SLURM_PROCID": "x"})


@pytest.mark.parametrize("visible, local_rank, index", [(4, 1, 1), (1, 3, 0)])
def test_a_rank_takes_its_gpu_among_those_it_sees(monkeypatch, visible, local_rank, index):
    """All the node's GPUs (torchrun, srun --gpus-per-node): the local rank's; one (srun --gpus-per-task 1): it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    assert rank_device("cuda", local_rank) == torch.device("cuda", index)
    assert rank_device("cuda:2", local_rank) == torch.device("cuda", 2)  # an index given is kept


@pytest.mark.parametrize(
    "cfg, message",
    [
        (
            _cfg(method="dsa"),
            "--method dsa cannot be split into class shards: its classes interact .DSA's inner network",
        ),
        (_cfg(classes=(0, 1)), "drop --classes"),
    ],
)
def test_runs_ranks_cannot_split_are_refused_before_joining_a_group(tmp_path, cfg, message):
    with pytest.raises(UsageError, match=message):
        condense_distributed(cfg, tmp_path / "x.safetensors", Ranks(0, 2, 0, 0), device="cpu")
    with pytest.raises(UsageError, match="the 11 ranks are more than the 10 classes"):
        condense_distributed(_cfg(), tmp_path / "x.safetensors", Ranks(0, 11, 0, 0), device="cpu")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--workers", "2"], ["under torchrun or srun every process is one rank", "drop --workers and --devices"]),
        (["--method", "dsa"], ["--method dsa cannot be split into class shards", "run it in one process"]),
    ],
)
def test_a_rank_refuses_in_one_line_what_it_cannot_run(capsys, monkeypatch, tmp_path, argv, fragments):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    code, _, err = run_cli(capsys, "condense", *FLAGS, *argv, "--quiet", "--out", tmp_path / "x.safetensors")
    assert code == 2
    assert_one_line_error(err, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_two_ranks_write_the_set_one_process_writes(tmp_path, one_thread):
    flags = ["--iterations", "5", "--model", TINY_MODEL]
    instance = _torchrun(tmp_path / "in.safetensors", *flags)
    output = _finish(instance)
    batch = _torchrun(tmp_path / "bn.safetensors", "--iterations", "5", "--model", BN_MODEL)
    one = condense(_cfg(iterations=5, model=TINY_MODEL), tmp_path / "one-in.safetensors")
    two = SyntheticSet.load(tmp_path / "in.safetensors")
    assert "from 2 ranks" in output
    assert torch.equal(two.images, one.images)  # InstanceNorm: bitwise
    assert torch.equal(two.labels, one.labels)
    assert two.meta["config"] == one.meta["config"] and two.meta["classes"] == list(range(10))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("in.")) == [
        "in.config.json",
        "in.png",
        "in.safetensors",  # the parts were merged and removed
    ]

    _finish(batch)
    one = condense(_cfg(iterations=5, model=BN_MODEL), tmp_path / "one-bn.safetensors")
    two = SyntheticSet.load(tmp_path / "bn.safetensors")
    assert one.meta["embedding_uses_batch_stats"] and two.meta["embedding_uses_batch_stats"]
    assert (two.images - one.images).abs().max() <= 1e-5  # BatchNorm over both ranks: one batch
    torch.testing.assert_close(torch.tensor(two.meta["loss_curve"]), torch.tensor(one.meta["loss_curve"]))


def _free_slurm_job_id() -> int:
    """A job id whose port (``launch_environment``) nothing on this machine listens on."""
    for port in SLURM_PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port - SLURM_PORTS.start + len(SLURM_PORTS)
    raise AssertionError("no free port in SLURM_PORTS")


def test_srun_tasks_without_torchrun_write_the_set_one_process_writes_and_only_rank_0_reports(tmp_path, one_thread):
    """Two tasks as ``srun --ntasks 2 python -m proxynas condense`` starts them (SLURM_*, no RANK) on two
    nodes, each with its own dataset cache; rank 0's node list entry is this machine."""
    out = tmp_path / "srun.safetensors"
    job = str(_free_slurm_job_id())
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.pop("MASTER_PORT", None)
    argv = [sys.executable, "-m", "proxynas", "condense", *FLAGS, "--iterations", "5", "--model", TINY_MODEL]
    tasks = [
        subprocess.Popen(
            [*argv, "--out", str(out)],
            env=env
            | {
                "OMP_NUM_THREADS": "1",
                "SLURM_PROCID": str(i),
                "SLURM_NTASKS": "2",
                "SLURM_LOCALID": "0",
                "SLURM_JOB_ID": job,
                "SLURM_STEP_ID": "0",
                "SLURM_STEP_NODELIST": "127.0.0.[1-2]",
                "PROXYNAS_CACHE": str(tmp_path / f"cache-node{i}"),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    rank0, rank1 = (_finish(task) for task in tasks)
    one = condense(_cfg(iterations=5, model=TINY_MODEL), tmp_path / "one.safetensors")
    two = SyntheticSet.load(out)
    assert torch.equal(two.images, one.images) and torch.equal(two.labels, one.labels)
    assert "decoding" in rank0 and "5/5 (100%)" in rank0 and "from 2 ranks" in rank0
    # rank 1 decoded its node's cache and ran every iteration too, and said nothing of it
    assert "decoding" not in rank1 and "condense" not in rank1 and "wrote" not in rank1, rank1


def test_workers_launch_the_same_group_so_batchnorm_shards_too(tmp_path, one_thread):
    """``condense --workers 2`` spawns two ranks of the process-group path: BatchNorm is shared, not refused."""
    cfg = _cfg(iterations=3, model=BN_MODEL)
    two = condense_sharded(cfg, tmp_path / "two.safetensors", 2, [torch.device("cpu")])
    one = condense(cfg, tmp_path / "one.safetensors")
    assert (two.images - one.images).abs().max() <= 1e-5 and torch.equal(two.labels, one.labels)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("two")) == [
        "two.config.json",
        "two.png",
        "two.safetensors",
    ]


def _kill_rank_mid_run(tmp_path: Path, model: str) -> tuple[str, Path]:
    out = tmp_path / "elastic.safetensors"
    proc = _torchrun(out, "--iterations", "100", "--checkpoint-every", "5", "--model", model, restarts=1)
    checkpoint = out.with_name("elastic.part2of2.safetensors.ckpt")
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "rank 1 never checkpointed"
        time.sleep(0.02)
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return _finish(proc), out


@pytest.mark.parametrize("model", [TINY_MODEL, pytest.param(BN_MODEL, marks=pytest.mark.slow)])
def test_a_rank_killed_mid_run_restarts_the_group_which_resumes(tmp_path, one_thread, model):
    output, out = _kill_rank_mid_run(tmp_path, model)
    # rank 0's first report after the restart starts past iteration 0: it resumed its checkpoint
    resumed = [line for line in output.splitlines() if "/100 (" in line and "loss" not in line]
    assert len(resumed) == 2 and not resumed[1].split("classes) ")[1].startswith("0/100"), output
    if model == TINY_MODEL:
        uninterrupted = condense(_cfg(iterations=100, checkpoint_every=5, model=model), tmp_path / "one.safetensors")
    else:  # BatchNorm over ranks matches one process to rounding, which 100 iterations compound
        _finish(_torchrun(tmp_path / "two.safetensors", "--iterations", "100", "--model", model))
        uninterrupted = SyntheticSet.load(tmp_path / "two.safetensors")
    assert torch.equal(SyntheticSet.load(out).images, uninterrupted.images)
    assert not list(tmp_path.glob("*.ckpt")) and not list(tmp_path.glob("*.part*"))


RECIPES = sorted((Path(__file__).parent.parent / "examples" / "slurm").iterdir())


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_slurm_recipes_parse_and_give_proxynas_only_flags_it_has(recipe):
    checked = subprocess.run(["bash", "-n", str(recipe)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    script = recipe.read_text().replace("\\\n", " ")  # one line per command
    commands = [
        line.split("proxynas ", 1)[1].split()
        for line in script.splitlines()
        if not line.lstrip().startswith("#") and "proxynas " in line and "proxynas-" not in line
    ]
    assert commands or recipe.suffix == ".sh", f"{recipe.name} runs no proxynas command"
    for name, *words in commands:
        usage = subprocess.run([sys.executable, "-m", "proxynas", name, "--help"], capture_output=True, text=True)
        assert usage.returncode == 0, f"{recipe.name}: no command proxynas {name}"
        for flag in (w.split("=")[0] for w in words if w.startswith("--")):
            assert f"{flag} " in usage.stdout or f"{flag}\n" in usage.stdout, f"{recipe.name}: {name} has no {flag}"
