"""The proxy-set file format (``proxynas.core.proxy_set``): a set is its ``.safetensors``, its config and its
image grid, all three or none, also when the writer is killed -9 between them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from proxynas.core.condense import CondenseConfig, checkpoint_path, condense, merge, parse_classes
from proxynas.core.proxy_set import SyntheticSet, config_path, grid_path
from proxynas.runtime import outputs
from tests.conftest import TINY_MODEL, make_dataset

ROOT = Path(__file__).resolve().parent.parent
CFG = {"ipc": 2, "iterations": 3, "batch_real": 8, "model": TINY_MODEL, "tune": "no", "seed": 1}

# Condenses CFG on make_dataset() into argv[1] and kill -9's itself right after the argv[2]-th of the set's
# three files is renamed into place: what a kill between two of them leaves.
KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from proxynas.core.condense import CondenseConfig, condense
    from proxynas.core.proxy_set import config_path, grid_path
    from tests.conftest import make_dataset

    out, after = Path(sys.argv[1]), int(sys.argv[2])
    files, placed, replace = {out, config_path(out), grid_path(out)}, [], os.replace

    def replace_then_die(src, dst):
        replace(src, dst)
        if Path(dst) in files:
            placed.append(dst)
            if len(placed) == after:
                os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace_then_die
    condense(CondenseConfig(**{cfg}), out, dataset=make_dataset(), device="cpu")
    """
)


def _set_files(out: Path) -> list[Path]:
    return [p for p in (grid_path(out), config_path(out), out) if p.exists()]


@pytest.mark.parametrize("after", [1, 2, 3])
def test_a_kill_between_the_files_of_a_set_leaves_none_and_resume_writes_all_three(tmp_path, after):
    straight = condense(CondenseConfig(**CFG), tmp_path / "straight.safetensors", dataset=make_dataset(), device="cpu")
    out = tmp_path / "cut.safetensors"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER.replace("{cfg}", repr(CFG)), str(out), str(after)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(_set_files(out)) == after  # killed between two files, as meant
    assert checkpoint_path(out).exists()  # every iteration is in it
    assert out.exists() == (after == 3)  # the .safetensors, the mark of a finished set, is written last

    resumed = condense(CondenseConfig(**CFG), out, dataset=make_dataset(), device="cpu", resume=True)
    assert _set_files(out) == [grid_path(out), config_path(out), out]
    assert not checkpoint_path(out).exists()
    torch.testing.assert_close(resumed.images, straight.images)
    assert SyntheticSet.load(out).meta["loss_curve"] == pytest.approx(straight.meta["loss_curve"])
    assert json.loads(config_path(out).read_text())["file"] == out.name


def test_resume_writes_again_the_companions_a_finished_set_lacks(tmp_path):
    """A set whose .safetensors is whole is finished, whatever happened to its companions (deleted, or
    a kill after a proxynas that wrote the .safetensors first had written it): --resume restores them."""
    out = tmp_path / "dm.safetensors"
    condense(CondenseConfig(**CFG), out, dataset=make_dataset(), device="cpu")
    config, grid = config_path(out).read_text(), grid_path(out).read_bytes()
    config_path(out).unlink()
    grid_path(out).unlink()
    checkpoint_path(out).write_bytes(b"left by the kill")
    stamp = out.stat().st_mtime_ns

    condense(CondenseConfig(**CFG), out, dataset=make_dataset(), device="cpu", resume=True)
    assert config_path(out).read_text() == config and grid_path(out).read_bytes() == grid
    assert not checkpoint_path(out).exists()
    assert out.stat().st_mtime_ns == stamp  # the finished set itself is not written again


def test_merge_writes_the_grid_and_config_before_the_set(tmp_path, monkeypatch):
    data = make_dataset(num_classes=4)
    kw = {**CFG, "method": "random"}
    parts = [tmp_path / f"part{i}.safetensors" for i in (1, 2)]
    for i, part in enumerate(parts, 1):
        condense(CondenseConfig(**kw, classes=parse_classes(f"{i}/2", 4)), part, dataset=data, device="cpu")
    placed: list[str] = []
    replace = os.replace

    def record(src, dst):
        replace(src, dst)
        placed.append(Path(dst).name)

    monkeypatch.setattr(outputs.os, "replace", record)
    merge(parts, tmp_path / "all.safetensors")
    assert placed == ["all.png", "all.config.json", "all.safetensors"]
