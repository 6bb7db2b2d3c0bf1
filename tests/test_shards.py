"""One condensation as class shards in parallel processes, merged: the same set as one process."""

from __future__ import annotations

import pytest
import torch

from proxynas.core.condense import CondenseConfig, condense, condense_sharded
from proxynas.exceptions import OutputExistsError, UsageError
from tests.conftest import TINY_MODEL

CPU = [torch.device("cpu")]


def _cfg(**kw) -> CondenseConfig:
    return CondenseConfig(
        **{"dataset": "digits", "ipc": 1, "iterations": 3, "batch_real": 8, "model": TINY_MODEL, "tune": "no", **kw}
    )


def test_three_shards_merge_into_what_one_process_writes(tmp_path):
    one = condense(_cfg(), tmp_path / "one.safetensors")
    updates = []
    sharded = condense_sharded(
        _cfg(),
        tmp_path / "sharded.safetensors",
        3,
        CPU,
        report=lambda done, total, loss: updates.append((done, total, loss)),
    )
    torch.testing.assert_close(sharded.images, one.images, rtol=1e-5, atol=1e-6)
    assert torch.equal(sharded.labels, one.labels)
    assert sharded.meta["config"] == one.meta["config"]
    torch.testing.assert_close(
        torch.tensor(sharded.meta["loss_curve"]), torch.tensor(one.meta["loss_curve"]), rtol=1e-5, atol=0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # parts merged and removed
        "one.config.json",
        "one.png",
        "one.safetensors",
        "sharded.config.json",
        "sharded.png",
        "sharded.safetensors",
    ]
    assert updates and updates[-1][:2] == (3, 3)


def test_a_finished_sharded_run_is_refused_without_resume_and_returned_with_it(tmp_path):
    out = tmp_path / "s.safetensors"
    first = condense_sharded(_cfg(method="random"), out, 2, CPU)
    with pytest.raises(OutputExistsError, match="--resume"):
        condense_sharded(_cfg(method="random"), out, 2, CPU)
    assert torch.equal(condense_sharded(_cfg(method="random"), out, 2, CPU, resume=True).images, first.images)


def test_parts_left_by_an_interrupted_run_need_resume(tmp_path):
    out = tmp_path / "s.safetensors"
    (tmp_path / "s.part1of2.safetensors.ckpt").write_bytes(b"")
    with pytest.raises(OutputExistsError, match="s.part1of2.safetensors.ckpt; pass --resume"):
        condense_sharded(_cfg(), out, 2, CPU)


@pytest.mark.parametrize(
    "cfg, workers, message",
    [
        (_cfg(method="dsa"), 2, "--method dsa cannot be split into class shards"),
        (_cfg(classes=(0, 1)), 2, "drop --classes"),
    ],
)
def test_runs_that_shards_would_change_are_refused(tmp_path, cfg, workers, message):
    with pytest.raises(UsageError, match=message):
        condense_sharded(cfg, tmp_path / "x.safetensors", workers, CPU)
    assert list(tmp_path.iterdir()) == []
