"""Candidates trained several times: per-repeat seeds, means and spreads, pruning on the first repeat."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from proxynas.core.networks import build
from proxynas.core.train import TrainConfig, accuracy, train_network
from proxynas.exceptions import StudyError, UsageError
from proxynas.nas.objectives import CandidateObjective, repeat_keys
from proxynas.nas.search import prepare, run_search
from proxynas.nas.search_space import load_space
from proxynas.nas.sources import proxy_source
from proxynas.runtime.seeding import derive_seed
from tests.conftest import TINY_SPACE, config, make_dataset


def trials_by_config(storage: str, study: str) -> dict[str, optuna.trial.FrozenTrial]:
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(states=(TrialState.COMPLETE,))
    return {t.user_attrs["config_id"]: t for t in trials}


def test_repeat_seeds_differ_and_repeat_0_keeps_the_single_run_seeds():
    cid = "d1-w8-relu-none-avg"
    assert repeat_keys(cid, 0) == (cid,)  # what a search without repeats derived its seeds from
    seeds = {derive_seed(0, "candidate", *repeat_keys(cid, r)) for r in range(5)}
    assert len(seeds) == 5 and derive_seed(0, "candidate", cid) in seeds


def test_a_trial_records_every_repeat_its_means_and_stds_and_repeat_0_is_the_single_run(
    proxy,
    space_file,
    tmp_path,
):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert run_search(config(proxy, space_file, storage, study="one", epochs=3, repeats=1)) == 4
    assert run_search(config(proxy, space_file, storage, study="two", epochs=3, repeats=2)) == 4
    one, two = trials_by_config(storage, "one"), trials_by_config(storage, "two")
    assert set(one) == set(two)
    assert optuna.load_study(study_name="two", storage=storage).user_attrs["protocol"]["repeats"] == 2
    for cid, t in two.items():
        a = t.user_attrs
        assert a["repeats"] == 2 and len(a["val_accs"]) == len(a["test_accs"]) == 2
        for name in ("val", "test"):
            assert a[f"{name}_acc"] == pytest.approx(np.mean(a[f"{name}_accs"]))
            assert a[f"{name}_std"] == pytest.approx(np.std(a[f"{name}_accs"]))
        assert t.value == a["val_acc"] == pytest.approx((a["val_accs"][0] + a["val_accs"][1]) / 2)
        # repeat 0 trains exactly what the one-repeat study trained
        assert a["val_accs"][0] == one[cid].user_attrs["val_acc"] == one[cid].value
        assert a["test_accs"][0] == one[cid].user_attrs["test_acc"]
        assert one[cid].user_attrs["val_accs"] == [one[cid].value] and one[cid].user_attrs["val_std"] == 0
    # the second repeat is another network, trained on another batch order
    assert any(t.user_attrs["val_accs"][0] != t.user_attrs["val_accs"][1] for t in two.values())


def test_resuming_with_another_repeat_count_is_refused_naming_it(proxy, space_file, tmp_path):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    prepare(config(proxy, space_file, storage, repeats=1))
    with pytest.raises(StudyError, match=r"trained with --repeats 1, not 3: resume it with --repeats 1, or use a new"):
        prepare(config(proxy, space_file, storage, repeats=3))


def test_repeats_below_one_are_refused(proxy, space_file, tmp_path):
    with pytest.raises(UsageError, match="--repeats must be at least 1"):
        config(proxy, space_file, f"sqlite:///{tmp_path / 'db.sqlite'}", repeats=0)
    assert not (tmp_path / "db.sqlite").exists()


def test_pruning_reports_the_first_repeats_validation_accuracy(proxy, space_file):
    source, space = proxy_source(proxy), load_space(str(space_file))
    params = {"depth": 1, "width": 8, "act": "relu", "norm": "instancenorm", "pool": "avg"}

    def run(repeats: int) -> optuna.trial.FrozenTrial:
        study = optuna.create_study(direction="maximize")  # in memory; the default pruner never prunes at step 1
        study.enqueue_trial(params)
        study.optimize(
            CandidateObjective(
                source, space, TrainConfig(epochs=20, batch_size=250), repeats=repeats, device="cpu", prune=True
            ),
            n_trials=1,
        )
        return study.trials[0]

    one, three = run(1), run(3)
    assert sorted(three.intermediate_values) == list(range(2, 20, 2))
    assert three.intermediate_values == one.intermediate_values  # the first repeat's, seeded as a single run
    assert three.user_attrs["val_accs"][0] == one.value and three.value == pytest.approx(
        np.mean(three.user_attrs["val_accs"])
    )


def test_a_validation_check_between_epochs_leaves_batchnorm_training_unchanged():
    # a pruning check evaluates the net (eval mode); training must go on in train mode, or
    # BatchNorm candidates train on running statistics from the first check on
    data = make_dataset()
    images, labels = data.normalise(data.train.images), data.train.labels
    cfg = TrainConfig(epochs=4, batch_size=20, dsa_strategy="none")

    def trained(check: bool) -> dict[str, torch.Tensor]:
        net = build("d1-w8-relu-batchnorm-avg", 3, 3, 16, seed=0)
        hook = (lambda epoch: accuracy(net, data.test.images, data.test.labels, data.normalise)) if check else None
        train_network(net, images, labels, cfg, torch.Generator().manual_seed(0), hook)
        return net.state_dict()

    plain, checked = trained(False), trained(True)
    assert all(torch.equal(plain[k], checked[k]) for k in plain)


@pytest.mark.parametrize("mode", ["sequential", "stacked"])
def test_pruned_search_trains_batchnorm_candidates_as_an_unpruned_one(proxy, tmp_path, mode):
    space_file = tmp_path / "bn.toml"
    space_file.write_text(TINY_SPACE.replace('"none", "instancenorm"', '"batchnorm"'))
    source, space = proxy_source(proxy), load_space(str(space_file))
    cfg = TrainConfig(epochs=10, batch_size=250, repeat_mode=mode)

    def run(prune: bool) -> optuna.trial.FrozenTrial:
        study = optuna.create_study(direction="maximize")  # the default pruner never prunes a first trial
        study.enqueue_trial({"depth": 1, "width": 8, "act": "relu", "norm": "batchnorm", "pool": "avg"})
        study.optimize(CandidateObjective(source, space, cfg, repeats=2, device="cpu", prune=prune), n_trials=1)
        return study.trials[0]

    pruned, unpruned = run(True), run(False)
    assert pruned.intermediate_values  # the checks ran
    for key in ("val_accs", "test_accs"):
        assert pruned.user_attrs[key] == unpruned.user_attrs[key]
