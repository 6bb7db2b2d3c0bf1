"""proxynas.nas.kinds: one StudyKind per kind of study, read by the search, the note and the report alike."""

from __future__ import annotations

import dataclasses
import itertools

import optuna
import pytest
from optuna.trial import create_trial

from proxynas.analysis.report import build_report
from proxynas.core.train import TrainConfig
from proxynas.exceptions import StudyError, UnknownNameError
from proxynas.nas.kinds import ACCURACY, KINDS, OTHER, Measure, StudyKind, baseline_budget, baseline_names, kind_of
from proxynas.nas.notes import study_note
from proxynas.nas.results import MEASURED_COLUMNS
from proxynas.nas.search import SearchConfig, make_source
from proxynas.nas.study import open_storage

IDS = [f"d{d}-w{w}-relu-none-avg" for d, w in itertools.product((1, 2), (32, 64))]
# what a study of each kind records about itself, as far as the note's "what" reads it
ATTRS = {"method": "dm", "ipc": 10, "proxy_path": "/p/dm.safetensors", "proxy_sha256": "ab" * 32, "minibatch": 64}


def test_every_kind_has_every_field_in_one_vocabulary():
    assert KINDS.names() == ["proxy", "whole", "early-stop", "zero-cost"]
    assert baseline_names() == ["whole", "early-stop"]  # `baseline --kind` names study kinds
    assert baseline_budget("whole").epochs == 100 and baseline_budget("early-stop").steps == 400  # §5's budgets
    with pytest.raises(UnknownNameError, match="unknown baseline 'proxy'; choose one of: whole, early-stop"):
        baseline_budget("proxy")
    for name in KINDS:
        kind = KINDS.get(name)
        for f in dataclasses.fields(StudyKind):
            if f.name != "budget":  # a baseline's only
                assert getattr(kind, f.name) is not None, (name, f.name)
        assert all(callable(c) for c in (kind.source, kind.objective, kind.what, kind.check, kind.metric))
        assert kind.measure.column and kind.measure.words
        assert kind.test_side in MEASURED_COLUMNS
        assert kind.split_fix.endswith(" with")  # the flags of the split follow it
        what = kind.what({"kind": name, **ATTRS})
        assert what and "None" not in what and "?" not in what, (name, what)
    zero_cost = KINDS.get("zero-cost")
    assert not zero_cost.trains and zero_cost.measure.column == "score" and zero_cost.test_side == "val_acc"
    assert [KINDS.get(n).measure for n in ("proxy", "whole", "early-stop")] == [ACCURACY] * 3
    assert kind_of("proxy") is KINDS.get("proxy") and kind_of("mystery") is OTHER and kind_of(None) is OTHER


@pytest.mark.parametrize(
    "given",
    [{"baseline": "whole"}, {"baseline": "early-stop", "train": TrainConfig(steps=5)}, {"zero_cost": "naswot"}],
)
def test_a_search_records_its_kind_by_the_registry_name(given):
    cfg = SearchConfig(study="s", dataset="digits", repeats=1, **given)
    assert cfg.kind in KINDS
    assert make_source(cfg).attrs["kind"] == cfg.kind  # the name the study records, the note and the report read


@pytest.fixture
def toy(monkeypatch) -> StudyKind:
    """A kind registered from here: nothing below names it, so whatever the note and report say of it is read off it."""

    def cannot(*_):
        raise AssertionError("a toy study is never searched here")

    kind = StudyKind(
        source=cannot,
        objective=cannot,
        what=lambda a: f"toy candidates of {a.get('method')}, weighed at birth",
        trains=False,
        measure=Measure("energy", "energy at birth"),
        test_side="val_acc",
        split_fix="weigh its candidates again with",
    )
    monkeypatch.setitem(KINDS._entries, "toy", kind)  # the registry has no removal; monkeypatch undoes it
    return kind


def add_study(storage, name: str, kind: str, vals, tests, fingerprint: str = "f" * 64) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    split = {"fingerprint": fingerprint, "val_fraction": 0.1, "seed": 0}
    for key, value in {"kind": kind, "method": name, "dataset": "digits", "split": split}.items():
        study.set_user_attr(key, value)
    for cid, val, test in zip(IDS, vals, tests, strict=True):
        study.add_trial(create_trial(value=val, user_attrs={"config_id": cid, "val_acc": val, "test_acc": test}))
    return study


def test_the_note_says_what_a_kind_is_from_its_registry_entry(toy, tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'k.db'}")
    note = study_note(add_study(storage, "t", "toy", (1, 2, 3, 4), (1, 2, 3, 4)))
    assert "## t: toy study" in note and "| what | toy candidates of t, weighed at birth |" in note
    assert "| protocol | no training;" in note  # trains=False
    other = study_note(add_study(storage, "m", "mystery", (1, 2, 3, 4), (1, 2, 3, 4)))
    assert "## m: mystery study" in other and "| what | mystery |" in other  # a kind proxynas does not know


def test_the_report_ranks_a_kind_by_its_measure_and_test_side(toy, tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'k.db'}")
    # the toy's recorded test accuracies run against its values; its test side is val_acc, so they go unread
    add_study(storage, "t", "toy", (1.0, 2.0, 3.0, 4.0), (0.4, 0.3, 0.2, 0.1))
    add_study(storage, "m", "mystery", (0.1, 0.2, 0.3, 0.4), (0.4, 0.3, 0.2, 0.1))
    add_study(storage, "w", "whole", (0.1, 0.2, 0.3, 0.4), (0.1, 0.2, 0.3, 0.4))
    report = build_report(storage, ["t"], "w", extra=["m"], top=4)
    assert report.measures == {"t": toy.measure, "m": ACCURACY, "whole": ACCURACY}
    assert "t_energy" in report.ranking and "t_test_acc" not in report.ranking and "t_val_acc" not in report.ranking
    assert "m_val_acc" in report.ranking and "m_test_acc" in report.ranking  # an unknown kind: an accuracy
    rows = report.summary.set_index("method")
    assert rows.loc["t", "spearman_all_test"] == pytest.approx(1.0)  # its values against whole's test accuracies
    assert rows.loc["m", "spearman_all_test"] == pytest.approx(-1.0)  # its own test accuracies, reversed


def test_a_split_mismatch_is_fixed_as_the_kind_says(toy, tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'k.db'}")
    add_study(storage, "t", "toy", (1, 2, 3, 4), (1, 2, 3, 4), fingerprint="a" * 64)
    add_study(storage, "p", "proxy", (1, 2, 3, 4), (1, 2, 3, 4), fingerprint="b" * 64)
    add_study(storage, "w", "whole", (1, 2, 3, 4), (1, 2, 3, 4))
    with pytest.raises(StudyError, match="weigh its candidates again with --exclude-split 0.1 --split-seed 0"):
        build_report(storage, ["t"], "w")
    with pytest.raises(StudyError, match="condense its proxy set again, then search it into a new study, with"):
        build_report(storage, ["p"], "w")
