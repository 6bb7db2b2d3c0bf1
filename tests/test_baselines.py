"""Baselines: whole-dataset and early-stopping studies over chosen configurations."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from torch import nn

from proxynas.cli import main
from proxynas.core.data import load_dataset, train_val_split
from proxynas.core.train import TrainConfig, train_network
from proxynas.exceptions import StudyError, UsageError
from proxynas.nas.baselines import select_configs
from proxynas.nas.search import SearchConfig, run_search
from proxynas.nas.study import CONFIG_KEY
from tests.conftest import TINY_SPACE, completed_once


def count_steps(cfg: TrainConfig, n: int) -> int:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    calls = []
    net.register_forward_hook(lambda m, i, o: calls.append(1))
    images, labels = torch.randn(n, 3, 4, 4), torch.randint(0, 2, (n,))
    train_network(net, images, labels, cfg, torch.Generator().manual_seed(0))
    return len(calls)


def test_training_runs_exactly_the_steps_asked():
    assert count_steps(TrainConfig(epochs=3, batch_size=4, dsa_strategy="none"), 10) == 3 * 3
    assert count_steps(TrainConfig(steps=7, batch_size=4, dsa_strategy="none"), 10) == 7  # past one epoch
    assert count_steps(TrainConfig(steps=2, batch_size=4, dsa_strategy="none"), 10) == 2  # inside one epoch


def test_uint8_batches_normalised_on_the_fly_match_pre_normalised_training():
    g = torch.Generator().manual_seed(1)
    raw = torch.randint(0, 256, (12, 3, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (12,), generator=g)
    normalise = lambda x: (x.float() / 255 - 0.5) / 0.25  # noqa: E731
    cfg = TrainConfig(epochs=2, batch_size=5, dsa_strategy="color_crop")
    nets = [nn.Sequential(nn.Flatten(), nn.Linear(192, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    train_network(nets[0], normalise(raw), labels, cfg, torch.Generator().manual_seed(5))
    train_network(nets[1], raw, labels, cfg, torch.Generator().manual_seed(5), normalise=normalise)
    assert torch.allclose(nets[0][1].weight, nets[1][1].weight, atol=1e-6)


def test_select_configs(tmp_path):
    assert select_configs("all", "sqlite://") is None
    assert select_configs("a,b,a", "sqlite://") == ("a", "b")
    f = tmp_path / "ids.txt"
    f.write_text("# chosen\nx\n\ny\n")
    assert select_configs(f"@{f}", "sqlite://") == ("x", "y")
    with pytest.raises(UsageError, match="no such file"):
        select_configs(f"@{tmp_path / 'missing'}", "sqlite://")
    for bad in ("top:only-two", "top:p:lots", "top:p:1.5"):  # 1.5 is neither a fraction nor a count
        with pytest.raises(UsageError, match="top:<study>"):
            select_configs(bad, "sqlite://")
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="p", storage=storage, direction="maximize")
    for cid, v in [("c1", 0.5), ("c2", 0.9), ("c3", 0.7), ("c4", 0.7)]:
        study.add_trial(optuna.trial.create_trial(value=v, user_attrs={CONFIG_KEY: cid}))
    assert select_configs("top:p:2", storage) == ("c2", "c3")  # ties broken by id
    assert select_configs("top:p:0.5", storage) == ("c2", "c3")
    study.set_user_attr("space", {"size": 8})  # half its space finished: 50% is 4 of 8, all that finished
    assert select_configs("top:p:0.5", storage) == ("c2", "c3", "c4", "c1")
    with pytest.raises(StudyError, match="no study named 'nope'"):
        select_configs("top:nope:3", storage)


def test_whole_and_early_stop_baselines_fill_chosen_configs(tmp_path):
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE)
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    ids = ("d1-w8-relu-none-avg", "d1-w16-relu-instancenorm-avg")
    digits = load_dataset("digits")
    n_train = len(train_val_split(digits.train.labels, 0.1, 0).train_idx)
    for kind, train in (("whole", TrainConfig(epochs=1, batch_size=250)), ("early-stop", TrainConfig(steps=2))):
        cfg = SearchConfig(
            study=kind,
            baseline=kind,
            dataset="digits",
            configs=ids,
            storage=storage,
            space=str(space),
            train=train,
            device="cpu",
            repeats=1,
        )
        assert run_search(cfg) == 2
        trials = completed_once(storage, kind, total=2)
        assert {t.user_attrs[CONFIG_KEY] for t in trials} == set(ids)
        attrs = optuna.load_study(study_name=kind, storage=storage).user_attrs
        assert attrs["kind"] == kind and attrs["split"]["val_fraction"] == 0.1
        # the real protocol: the steps one training runs, epochs only where they define them, the DSA used
        assert attrs["protocol"]["dsa_strategy"] == digits.info.dsa_strategy
        assert (attrs["protocol"]["epochs"], attrs["protocol"]["steps"]) == {
            "whole": (1, math.ceil(n_train / 250)),
            "early-stop": (None, 2),
        }[kind]
    with pytest.raises(StudyError, match="not in the space"):
        run_search(
            SearchConfig(
                study="x",
                baseline="whole",
                dataset="digits",
                configs=("d9-w1-relu-none-avg",),
                storage=storage,
                space=str(space),
                device="cpu",
            )
        )


def test_baseline_command_top_of_a_proxy_study(capsys, tmp_path, proxy):
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE)
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    common = [
        "--storage",
        storage,
        "--space",
        str(space),
        "--epochs",
        "1",
        "--repeats",
        "2",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(["search", "--proxy", str(proxy), "--study", "rnd", *common]) == 0
    assert (
        main(
            [
                "baseline",
                "--kind",
                "whole",
                "--dataset",
                "digits",
                "--study",
                "whole",
                "--configs",
                "top:rnd:2",
                *common,
            ]
        )
        == 0
    )
    whole = optuna.load_study(study_name="whole", storage=storage)
    assert len(whole.trials) == 2 and {t.user_attrs["repeats"] for t in whole.trials} == {2}
    assert whole.user_attrs["command"].startswith("proxynas baseline --kind whole --dataset digits --study whole")
    assert "--configs" not in whole.user_attrs["command"] and "top:rnd:2" not in whole.user_attrs["command"]


def test_score_command_writes_one_study_per_zero_cost_proxy(tmp_path, caplog):
    caplog.set_level("INFO", logger="proxynas")
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE)
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert (
        main(
            [
                "score",
                "--dataset",
                "digits",
                "--metrics",
                "naswot,grad_norm",
                "--batch-size",
                "8",
                "--study-prefix",
                "zc-",
                "--storage",
                storage,
                "--space",
                str(space),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    for metric in ("naswot", "grad_norm"):
        study = optuna.load_study(study_name=f"zc-{metric}", storage=storage)
        assert study.user_attrs["kind"] == "zero-cost" and study.user_attrs["method"] == metric
        completed_once(storage, f"zc-{metric}", total=4)
        best = f"best {study.best_value:.4g} ("  # a score, not shown as a percentage
        assert any(
            f" zc-{metric} 4/4 (100%) done" in r.getMessage() and best in r.getMessage()  # after a timestamp
            for r in caplog.records
        )
