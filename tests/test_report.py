"""proxynas.analysis.report: Table 5 statistics against hand-computed values, on studies built here."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState, create_trial

from proxynas.analysis import rankings
from proxynas.analysis.plots import padded, plot_correlations, plot_top
from proxynas.analysis.report import Report, build_report, write_report
from proxynas.analysis.statistics import SUMMARY_COLUMNS, top_advice
from proxynas.core.networks import NetConfig
from proxynas.exceptions import StudyError, UsageError
from proxynas.nas import results
from proxynas.nas.kinds import Measure
from proxynas.nas.results import (
    CONFIG_COLUMNS,
    FRAME_COLUMNS,
    MEASURED_COLUMNS,
    config_columns,
    parse_top,
    study_frame,
    top_configs,
    top_count,
)
from proxynas.nas.study import open_storage

# 40 configuration ids of the real form, in a fixed order
IDS = [
    f"d{d}-w{w}-relu-{n}-{p}"
    for d, w, n, p in itertools.product((1, 2), (32, 64, 128, 256, 512), ("none", "instancenorm"), ("avg", "max"))
]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def storage(tmp_path):
    return open_storage(f"sqlite:///{tmp_path / 'report.db'}")


def top_plot(report: Report):
    """plots.plot_top of a report, as write_report draws it."""
    settings = report.settings
    return plot_top(report.ranking, report.summary, report.top, report.measures, settings["top"], settings["dataset"])


def trial_attrs(cid: str, val: float, test: float) -> dict:
    depth, width, act, norm, pool = cid.split("-")
    return {
        "config_id": cid,
        "depth": int(depth[1:]),
        "width": int(width[1:]),
        "act": act,
        "norm": norm,
        "pool": pool,
        "params": 1000 * int(width[1:]),
        "flops": 7,
        "val_acc": val,
        "test_acc": test,
        "train_seconds": 60.0,
        "device": "cpu",
        "seed": 0,
    }


def add_study(
    storage, name: str, accs: dict[str, float], tests: dict[str, float] | None = None, **attrs
) -> optuna.Study:
    """A study with one COMPLETE trial per config (test accuracy val - 0.01 unless given)."""
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    for key, value in {"kind": "proxy", "method": name, "dataset": "cifar10", **attrs}.items():
        if value is not None:  # None: leave the attribute out
            study.set_user_attr(key, value)
    for cid, val in accs.items():
        test = (tests or {}).get(cid, val - 0.01)
        study.add_trial(create_trial(value=val, user_attrs=trial_attrs(cid, val, test)))
    return study


def descending(ids: list[str], start: float = 0.9, step: float = 0.01) -> dict[str, float]:
    return {cid: start - i * step for i, cid in enumerate(ids)}


def row(report, method: str) -> pd.Series:
    return report.summary.set_index("method").loc[method]


def test_top_count_rounds_fractions_and_caps_counts():
    assert top_count(0.05, 720) == 36
    assert top_count(0.05, 40) == 2
    assert top_count(0.05, 50) == 2  # round(2.5) is 2: half to even, as baselines.select_configs
    assert top_count(0.05, 70) == 4  # round(3.5) is 4
    assert top_count(0.05, 10) == 1  # never empty
    assert top_count(3, 40) == 3 and top_count(36.0, 720) == 36 and top_count(50, 40) == 40
    assert top_count(0.5, 0) == 0
    assert top_count(1.0, 40) == 1  # a whole number is a count, as in baselines.select_configs
    for bad in (0, 0.0, 1.5, -1, -0.5, True, "0.05"):
        with pytest.raises(UsageError, match="fraction in"):
            top_count(bad, 40)


def test_parse_top_reads_a_command_line_value():
    assert parse_top("0.05") == 0.05 and parse_top("36") == 36 and parse_top("36.0") == 36
    assert isinstance(parse_top("36.0"), int) and parse_top("1.0") == 1  # a whole number is a count
    for bad in ("abc", "", "1.5", "0", "-1"):
        with pytest.raises(UsageError, match="fraction in"):
            parse_top(bad)


def test_top_configs_by_accuracy_with_ties_to_the_smaller_id():
    frame = pd.DataFrame({"config_id": IDS, "val_acc": [0.5] * 40})
    frame.loc[frame.config_id == IDS[7], "val_acc"] = 0.9
    frame.loc[frame.config_id == IDS[3], "val_acc"] = 0.8
    assert top_configs(frame, 0.05) == [IDS[7], IDS[3]]
    # three-way tie below the best: the smallest ids win, and the order is the same every time
    tied = frame.assign(val_acc=[0.9 if cid == "d2-w32-relu-none-max" else 0.5 for cid in IDS])
    assert top_configs(tied, 3) == ["d2-w32-relu-none-max", *sorted(IDS)[:2]]


def test_study_frame_keeps_complete_trials_once(storage, caplog):
    study = add_study(storage, "dm", {IDS[0]: 0.6, IDS[1]: 0.7})
    study.add_trial(create_trial(value=0.99, user_attrs=trial_attrs(IDS[0], 0.99, 0.99)))  # a second COMPLETE
    for state in (TrialState.FAIL, TrialState.PRUNED):
        study.add_trial(create_trial(state=state, user_attrs={"config_id": IDS[2]}))
    study.enqueue_trial({}, user_attrs={"config_id": IDS[3]})  # WAITING
    with caplog.at_level(logging.WARNING, logger="proxynas.nas.results"):
        frame = study_frame(storage, "dm")
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert frame.config_id.tolist() == [IDS[0], IDS[1]]
    assert frame.val_acc.tolist() == [0.6, 0.7]  # the first COMPLETE trial of IDS[0], not the later 0.99
    assert frame.loc[0, ["depth", "width", "act", "norm", "pool", "params"]].tolist() == [
        1,
        32,
        "relu",
        "none",
        "avg",
        32000,
    ]
    assert f"2 complete trials of {IDS[0]}" in caplog.text


def test_correlations_with_ties_match_hand_computation(storage):
    ids = IDS[:4]
    add_study(storage, "dm", dict(zip(ids, (0.1, 0.2, 0.2, 0.3), strict=True)))
    add_study(storage, "random", dict(zip(ids, (0.4, 0.2, 0.3, 0.1), strict=True)))  # the exact reverse of whole
    add_study(storage, "w", dict(zip(ids, (0.1, 0.3, 0.2, 0.4), strict=True)), kind="whole", method="whole")
    report = build_report(storage, ["dm", "random"], "w", top=4)
    assert list(report.summary.columns) == list(SUMMARY_COLUMNS)
    assert report.summary.method.tolist() == ["dm", "random"]  # no trivial whole-against-whole row
    dm = row(report, "dm")
    # ranks x = (1, 2.5, 2.5, 4), y = (1, 3, 2, 4); deviations (-1.5, 0, 0, 1.5) and (-1.5, .5, -.5, 1.5):
    # rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert dm.spearman_top == pytest.approx(math.sqrt(0.9)) and dm.spearman_all == pytest.approx(math.sqrt(0.9))
    # 5 concordant pairs, 0 discordant, 1 pair tied in x only: tau_b = 5 / sqrt((6 - 1) * 6)
    assert dm.kendall_all == pytest.approx(5 / math.sqrt(30))
    assert (dm.n_top, dm.n_top_missing, dm.n_shared) == (4, 0, 4)
    assert dm.selected == ids[3] and dm.selected_whole_test_acc == pytest.approx(0.39)
    assert dm.selected_own_test_acc == pytest.approx(0.29)
    assert dm.train_hours == pytest.approx(4 * 60 / 3600)
    rnd = row(report, "random")
    assert rnd.spearman_top == pytest.approx(-1) and rnd.kendall_all == pytest.approx(-1)
    assert rnd.selected == ids[0] and rnd.selected_whole_test_acc == pytest.approx(0.09)
    assert report.top["whole"] == [ids[3], ids[1], ids[2], ids[0]]  # its own top set, by validation accuracy
    assert (
        report.missing == {}
        and report.fill_commands == []
        and report.notes
        == [
            f"{m}: --k 10 is more than the 4 configs shared with the whole-dataset study, so k is capped at 4, "
            "where the top-k overlap is 1 whatever the ranking; give a smaller k, e.g. --k 2"
            for m in ("dm", "random")
        ]
    )
    assert dm.topk_overlap == rnd.topk_overlap == 1  # the capped k takes every configuration: 1 by construction


def test_top_set_is_the_methods_own_top_fraction(storage):
    add_study(storage, "dm", descending(IDS))  # IDS[0] best
    # whole agrees on IDS[0] > IDS[1] but reverses everything else
    add_study(
        storage,
        "w",
        {IDS[0]: 0.95, IDS[1]: 0.94, **descending(IDS[2:], start=0.1, step=-0.001)},
        kind="whole",
        method="whole",
    )
    dm = row(build_report(storage, ["dm"], "w"), "dm")
    assert (dm.n_top, dm.spearman_top) == (2, pytest.approx(1.0))  # 5% of 40 = 2: the agreeing pair
    assert dm.spearman_all < 0


def test_topk_overlap(storage):
    ids = IDS[:6]
    add_study(storage, "dm", descending(ids))  # top 3: ids 0, 1, 2
    add_study(storage, "w", descending([ids[0], ids[3], ids[1], ids[2], ids[4], ids[5]]), kind="whole")
    assert row(build_report(storage, ["dm"], "w", k=3), "dm").topk_overlap == pytest.approx(2 / 3)
    assert row(build_report(storage, ["dm"], "w", k=1), "dm").topk_overlap == 1
    assert row(build_report(storage, ["dm"], "w", k=2), "dm").topk_overlap == pytest.approx(1 / 2)


def test_a_slice_at_the_default_top_and_k_gets_one_line_each_naming_what_works(storage, capsys):
    from proxynas.cli import ReportCommand

    ids = IDS[:4]
    add_study(storage, "dm", dict(zip(ids, (0.4, 0.3, 0.2, 0.1), strict=True)))
    add_study(storage, "random", dict(zip(ids, (0.1, 0.3, 0.2, 0.4), strict=True)))
    add_study(storage, "w", dict(zip(ids, (0.9, 0.7, 0.8, 0.6), strict=True)), kind="whole")
    report = build_report(storage, ["dm", "random"], "w")  # the defaults: top 5% (1 of 4), k 10
    advice = (
        "dm, random: the top 5% of 4 configurations selects 1, and Spearman needs 2, so Spearman over the top "
        "set is undefined; ask for more with a count, e.g. --top 4 (all 4)"
    )
    capped = (
        "{}: --k 10 is more than the 4 configs shared with the whole-dataset study, so k is capped at 4, where "
        "the top-k overlap is 1 whatever the ranking; give a smaller k, e.g. --k 2"
    )
    # one line for both methods, in place of each one's "Spearman over the top 5% undefined (1 config ...)"
    assert report.notes == [advice, capped.format("dm"), capped.format("random")]
    dm = row(report, "dm")
    assert math.isnan(dm.spearman_top) and dm.n_top == 1 and dm.topk_overlap == 1
    ReportCommand.show(report, "slice", {})
    shown = " ".join(capsys.readouterr().out.split())  # as one line, wherever the terminal wrapped it
    assert f"note: {advice}" in shown and f"note: {capped.format('random')}" in shown

    # what the notes suggest works, silently. dm ranks (1, 2, 3, 4), whole (1, 3, 2, 4): rho = 1 - 6 * 2 / 60;
    # random ranks (4, 2, 3, 1): the exact reverse of whole. Top 2: dm {0, 1}, random {3, 1}, whole {0, 2}
    fixed = build_report(storage, ["dm", "random"], "w", top=4, k=2)
    assert fixed.notes == []
    assert (row(fixed, "dm").spearman_top, row(fixed, "dm").topk_overlap) == (pytest.approx(0.8), 0.5)
    assert (row(fixed, "random").spearman_top, row(fixed, "random").topk_overlap) == (pytest.approx(-1), 0)
    # a k of every shared configuration is not capped, but measures nothing either
    assert build_report(storage, ["dm"], "w", top=4, k=4).notes == [
        "dm: --k 4 takes all 4 configs shared with the whole-dataset study, where the top-k overlap is 1 whatever "
        "the ranking; give a smaller k, e.g. --k 2"
    ]


def test_top_advice_suggests_the_papers_share_of_a_space_where_it_is_enough():
    why = "the top {} of {} configuration{} selects 1, and Spearman needs 2, so Spearman over the top set is undefined"
    assert top_advice(1, {"dm": 720, "random": 720, "naswot": 4}) == [
        f"dm, random: {why.format(1, 720, 's')}; ask for more with a count, e.g. --top 36 (the top 5%)",
        f"naswot: {why.format(1, 4, 's')}; ask for more with a count, e.g. --top 4 (all 4)",
    ]
    assert top_advice(0.05, {"dm": 1}) == [
        f"dm: {why.format('5%', 1, '')}; no --top can help: search more configurations"
    ]
    assert top_advice(0.05, {"dm": 40, "empty": 0}) == []  # 5% of 40 is 2; an empty study has its own note


def test_the_top_advice_counts_the_studys_whole_space(storage):
    add_study(storage, "dm", descending(IDS[:4]), space={"size": 720})
    add_study(storage, "w", descending(IDS[:4]), kind="whole")
    notes = build_report(storage, ["dm"], "w", top=0.001, k=2).notes  # 0.1% of 720 is 1 (of 4 it would be too)
    assert notes[0].startswith("dm: the top 0.1% of 720 configurations selects 1") and notes[0].endswith(
        "--top 36 (the top 5%)"
    )


def test_missing_whole_results_are_listed_with_a_fill_command(storage):
    dm_accs = descending(IDS)  # top 10% = IDS[0..3]
    add_study(storage, "dm", dm_accs)
    add_study(storage, "herding", descending(IDS[::-1]))  # top 10% = IDS[39..36]
    whole_ids = [c for c in IDS if c not in (IDS[0], IDS[38])]
    whole_accs = {c: 0.5 for c in whole_ids} | {IDS[1]: 0.7, IDS[2]: 0.9, IDS[3]: 0.8}
    whole = add_study(
        storage,
        "w",
        whole_accs,
        kind="whole",
        method="whole",
        command="proxynas baseline --kind whole --dataset cifar10 --study w",
    )
    whole.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"config_id": IDS[0]}))  # failed: still missing
    report = build_report(storage, ["dm", "herding"], "w", top=0.1)
    assert report.missing == {"dm": [IDS[0]], "herding": [IDS[38]]}
    assert report.top["dm"] == IDS[:4]
    assert report.fill_commands == [
        f"proxynas baseline --kind whole --dataset cifar10 --study w --configs {','.join(sorted([IDS[0], IDS[38]]))}"
    ]
    dm = row(report, "dm")
    # over IDS[1..3] only: dm ranks (1, 2, 3), whole ranks (3, 1, 2): rho = 1 - 6 * (4 + 1 + 1) / (3 * 8)
    assert dm.spearman_top == pytest.approx(-0.5)
    assert (dm.n_top, dm.n_top_missing) == (3, 1)
    assert dm.selected == IDS[0] and math.isnan(dm.selected_whole_test_acc)
    assert dm.selected_own_test_acc == pytest.approx(0.89)
    assert "dm: 1 of its 4 top 10% configs lack whole-dataset results" in " ".join(report.notes)


def test_fill_command_without_a_recorded_command(storage):
    add_study(storage, "dm", descending(IDS[:2]))
    add_study(storage, "w", {IDS[1]: 0.5}, kind="whole")
    report = build_report(storage, ["dm"], "w", top=1)
    assert report.fill_commands == [  # with --dataset, which 'baseline' requires
        f"proxynas baseline --kind whole --dataset cifar10 --study w --storage {storage.url} --configs {IDS[0]}"
    ]


def test_undefined_correlations_are_nan_with_a_note(storage):
    add_study(storage, "dm", descending(IDS[:5]))
    add_study(storage, "flat", {c: 0.5 for c in IDS[:5]})
    add_study(storage, "w", {IDS[0]: 0.9}, kind="whole")  # one config shared with each method
    report = build_report(storage, ["dm", "flat"], "w", top=3)
    dm = row(report, "dm")
    assert math.isnan(dm.spearman_top) and math.isnan(dm.spearman_all) and math.isnan(dm.kendall_all)
    assert (dm.n_top, dm.n_top_missing, dm.n_shared) == (1, 2, 1)
    assert "dm: Spearman over the top 3 undefined (1 config with whole-dataset results)" in report.notes
    assert (
        "dm: Kendall's tau over all shared configs undefined (1 config shared with the whole-dataset study)"
        in report.notes
    )

    add_study(storage, "w2", {c: 0.1 * i for i, c in enumerate(IDS[:5])}, kind="whole")
    report = build_report(storage, ["flat"], "w2", top=3)
    flat = row(report, "flat")
    assert math.isnan(flat.spearman_top) and math.isnan(flat.kendall_all) and flat.n_shared == 5
    assert (
        "flat: Spearman over all shared configs undefined (constant flat accuracies over the 5 configs shared "
        "with the whole-dataset study)" in report.notes
    )


def test_method_names_come_from_the_study_and_stay_unique(storage):
    add_study(storage, "s1", descending(IDS[:3]), method="dm")
    add_study(storage, "s2", descending(IDS[:3]), method="dm")
    add_study(storage, "es", descending(IDS[:3]), kind="early-stop", method="early-stop")
    add_study(storage, "zc", descending(IDS[:3]), kind="zero-cost", method="whole")  # clashes with the whole row
    add_study(storage, "plain", descending(IDS[:3]), method=None)
    add_study(storage, "w", descending(IDS[:3]), kind="whole", method="whole")
    report = build_report(storage, ["s1", "s2"], "w", early_stop="es", extra=["zc", "plain"])
    assert report.summary.method.tolist() == ["dm (s1)", "dm (s2)", "early-stop", "whole (zc)", "plain"]
    assert report.studies == {
        "dm (s1)": "s1",
        "dm (s2)": "s2",
        "early-stop": "es",
        "whole (zc)": "zc",
        "plain": "plain",
        "whole": "w",
    }


def test_ranking_frame(storage):
    add_study(storage, "dm", {IDS[0]: 0.5, IDS[1]: 0.7, IDS[2]: 0.7})
    add_study(storage, "w", {IDS[1]: 0.6, IDS[3]: 0.8}, tests={IDS[3]: 0.75}, kind="whole")
    ranking = build_report(storage, ["dm"], "w").ranking
    assert list(ranking.columns) == [
        *CONFIG_COLUMNS,
        "dm_val_acc",
        "dm_test_acc",
        "dm_val_std",
        "dm_rank",
        "whole_val_acc",
        "whole_test_acc",
        "whole_val_std",
        "whole_rank",
    ]
    # whole rank first, then the rest by id (IDS[2] is d1-w32-relu-instancenorm-avg < IDS[0], ...-none-avg)
    assert ranking.config_id.tolist() == [IDS[3], IDS[1], IDS[2], IDS[0]]
    assert str(ranking.dm_rank.dtype) == "Int64" and str(ranking.whole_rank.dtype) == "Int64"  # ranks are integers
    assert ranking.dm_rank.tolist()[1:] == [1, 1, 3]  # the tie at 0.7 shares rank 1; then 3
    assert ranking.dm_rank.isna()[0] and ranking.whole_rank.tolist()[:2] == [1, 2]
    assert ranking.whole_test_acc[0] == 0.75 and ranking.width.tolist() == [32, 32, 32, 32]
    # the test accuracy of the network trained on the proxy (trial_attrs: validation - 0.01)
    assert ranking.dm_test_acc[1:].tolist() == pytest.approx([0.69, 0.69, 0.49])


def test_frame_columns_are_the_fields_of_netconfig():
    axes = tuple(f.name for f in dataclasses.fields(NetConfig))
    assert CONFIG_COLUMNS == ("config_id", *axes, "params", "flops")
    assert FRAME_COLUMNS == (*CONFIG_COLUMNS, *MEASURED_COLUMNS)


def test_a_new_axis_files_as_a_configuration_column(storage, monkeypatch):
    """As if NetConfig gained an axis: read off the id, kept as it is, never taken for a measurement."""

    @dataclasses.dataclass(frozen=True)
    class Dilated(NetConfig):
        dilation: int = 2

    config = config_columns(Dilated)
    assert config == ("config_id", "depth", "width", "act", "norm", "pool", "dilation", "params", "flops")
    monkeypatch.setattr(results, "NetConfig", Dilated)
    monkeypatch.setattr(results, "CONFIG_COLUMNS", config)
    monkeypatch.setattr(results, "FRAME_COLUMNS", (*config, *MEASURED_COLUMNS))
    monkeypatch.setattr(rankings, "CONFIG_COLUMNS", config)
    add_study(storage, "dm", {IDS[0]: 0.5, IDS[1]: 0.7})
    add_study(storage, "w", {IDS[0]: 0.6, IDS[1]: 0.8}, kind="whole")
    frame = study_frame(storage, "dm")
    assert list(frame.columns) == [*config, *MEASURED_COLUMNS]
    assert frame.dilation.tolist() == [2, 2] and frame.val_acc.tolist() == [0.5, 0.7]
    assert (frame.dtypes[list(MEASURED_COLUMNS)] == "float64").all() and frame.dtypes.dilation == "int64"
    ranking = build_report(storage, ["dm"], "w").ranking
    assert list(ranking.columns[: len(config)]) == list(config)
    shown = ranking.set_index("config_id").loc[IDS[1], ["dilation", "params", "dm_val_acc", "whole_val_acc"]]
    assert shown.tolist() == [2, 32000, 0.7, 0.8]


def test_spread_over_repeats_is_shown_per_configuration_and_per_method(storage, capsys):
    from proxynas.cli import ReportCommand

    def with_repeats(study: optuna.Study, accs: dict[str, list[float]]) -> None:
        for cid, val in accs.items():
            mean = sum(val) / len(val)
            std = math.sqrt(sum((v - mean) ** 2 for v in val) / len(val))
            study.add_trial(
                create_trial(
                    value=mean,
                    user_attrs={**trial_attrs(cid, mean, mean), "val_std": std, "val_accs": val, "repeats": len(val)},
                )
            )

    dm = optuna.create_study(storage=storage, study_name="dm", direction="maximize")
    dm.set_user_attr("kind", "proxy")
    # means 0.6, 0.5, 0.4; population stds 0.1, 0.0, 0.05
    with_repeats(dm, {IDS[0]: [0.5, 0.7], IDS[1]: [0.5, 0.5], IDS[2]: [0.35, 0.45]})
    add_study(storage, "syn", {IDS[0]: 3.0, IDS[1]: 2.0, IDS[2]: 1.0}, kind="zero-cost", method="synflow")
    add_study(storage, "w", {IDS[0]: 0.6, IDS[1]: 0.8, IDS[2]: 0.7}, kind="whole")
    report = build_report(storage, ["dm"], "w", extra=["syn"], top=3)
    ranking = report.ranking.set_index("config_id")
    assert ranking.loc[[IDS[0], IDS[1], IDS[2]], "dm_val_acc"].tolist() == pytest.approx([0.6, 0.5, 0.4])  # means
    assert ranking.loc[[IDS[0], IDS[1], IDS[2]], "dm_val_std"].tolist() == pytest.approx([0.1, 0.0, 0.05])
    assert ranking.synflow_val_std.isna().all()  # a score has no repeats
    assert row(report, "dm").mean_val_std == pytest.approx(0.05)  # (0.1 + 0 + 0.05) / 3
    assert math.isnan(row(report, "synflow").mean_val_std)
    ReportCommand.show(report, "spread", {})
    table = capsys.readouterr().out
    assert "± val" in table and "0.050" in table


def test_the_selection_table_says_which_training_each_test_accuracy_is(storage, capsys, monkeypatch):
    import re

    from proxynas import cli

    # dm selects IDS[1] (val 0.7) and tests it at 0.25; whole-dataset training tests it at 0.79 (0.8 - 0.01)
    add_study(storage, "dm", {IDS[0]: 0.6, IDS[1]: 0.7}, tests={IDS[0]: 0.2, IDS[1]: 0.25})
    add_study(storage, "w", {IDS[0]: 0.9, IDS[1]: 0.8}, kind="whole")
    monkeypatch.setattr(cli.out, "width", 200)  # wide enough that no header wraps
    cli.ReportCommand.show(build_report(storage, ["dm"], "w", top=1), "labels", {})
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if "selected" in line and "┃" in line)
    dm = next(line for line in lines[header:] if line.strip(" │").startswith("dm "))
    cells = dict(zip(*([c.strip() for c in re.split("[│┃]", line)] for line in (lines[header], dm)), strict=True))
    assert (cells["selected"], cells["whole-run test acc"], cells["method-run test acc"]) == (IDS[1], "0.79", "0.25")
    shown = " ".join(" ".join(lines).split())
    assert "trained on the whole dataset (whole-run) and as the method trained it (method-run)" in shown


def test_zero_cost_values_are_scores_in_the_ranking(storage):
    add_study(storage, "dm", {IDS[0]: 0.5, IDS[1]: 0.7})
    add_study(storage, "syn", {IDS[0]: 3e9, IDS[1]: 2e9}, kind="zero-cost", method="synflow")
    add_study(storage, "w", {IDS[0]: 0.6, IDS[1]: 0.8}, kind="whole")
    report = build_report(storage, ["dm"], "w", extra=["syn"])
    assert report.measures == {
        "dm": Measure("val_acc", "validation accuracy"),
        "synflow": Measure("score", "score at initialisation"),
        "whole": Measure("val_acc", "validation accuracy"),
    }
    assert report.ranking.synflow_score.tolist() == [2e9, 3e9] and "synflow_val_acc" not in report.ranking
    assert report.ranking.synflow_rank.tolist() == [2, 1]
    labels = [ax.get_xlabel() for ax in top_plot(report).axes if ax.get_visible()]
    assert labels == ["dm validation accuracy", "synflow score at initialisation"]


def test_write_report_round_trips_and_plots(storage, tmp_path):
    add_study(storage, "dm", descending(IDS, step=1 / 3 / 40))
    add_study(storage, "random", {c: 0.5 for c in IDS})  # undefined correlations: plotted as n/a
    add_study(storage, "w", {c: (i * 7919 % 40) / 41 for i, c in enumerate(IDS)}, kind="whole")
    report = build_report(storage, ["dm", "random"], "w", top=0.25)
    paths = write_report(report, tmp_path / "out" / "report", command="proxynas report --proxy-studies dm random")
    assert sorted(paths) == ["config", "correlations", "ranking", "scatter_top", "summary"]
    for name in ("ranking", "summary"):
        ranks = {c: "Int64" for c in getattr(report, name).columns if c.endswith("_rank")}
        back = pd.read_csv(paths[name], dtype=ranks)
        pd.testing.assert_frame_equal(back, getattr(report, name), check_exact=True)
    assert list(pd.read_csv(paths["summary"]).columns) == list(SUMMARY_COLUMNS)
    for name in ("scatter_top", "correlations"):
        data = paths[name].read_bytes()
        assert len(data) > 1000 and data.startswith(PNG)


def test_errors_name_the_problem(storage, tmp_path):
    add_study(storage, "dm", descending(IDS[:3]))
    add_study(storage, "mnist-dm", descending(IDS[:3]), dataset="mnist")
    add_study(storage, "w", descending(IDS[:3]), kind="whole")
    with pytest.raises(StudyError, match="different datasets"):
        build_report(storage, ["dm", "mnist-dm"], "w")
    with pytest.raises(UsageError, match="'dm' is named twice"):
        build_report(storage, ["dm", "dm"], "w")
    with pytest.raises(StudyError, match="no study named 'nope'"):
        build_report(storage, ["nope"], "w")
    with pytest.raises(UsageError, match="k must be >= 1"):
        build_report(storage, ["dm"], "w", k=0)
    with pytest.raises(StudyError, match="no database at"):
        study_frame(f"sqlite:///{tmp_path / 'missing.db'}", "dm")
    assert not (tmp_path / "missing.db").exists()
    assert build_report(storage, ["w"], "dm").notes[0] == "the whole-dataset study 'dm' has kind 'proxy', not 'whole'"


def test_test_accuracies_are_correlated_beside_validation_ones(storage):
    ids = IDS[:4]
    # dm: validation agrees with whole exactly; test accuracies rank (1, 3, 2, 4) against whole's (4, 3, 2, 1)
    add_study(
        storage,
        "dm",
        dict(zip(ids, (0.1, 0.2, 0.3, 0.4), strict=True)),
        tests=dict(zip(ids, (0.1, 0.3, 0.2, 0.4), strict=True)),
    )
    add_study(storage, "syn", dict(zip(ids, (4.0, 3.0, 2.0, 1.0), strict=True)), kind="zero-cost", method="synflow")
    add_study(
        storage,
        "w",
        dict(zip(ids, (0.1, 0.2, 0.3, 0.4), strict=True)),
        tests=dict(zip(ids, (0.4, 0.3, 0.2, 0.1), strict=True)),
        kind="whole",
    )
    report = build_report(storage, ["dm"], "w", extra=["syn"], top=4)
    dm, syn = row(report, "dm"), row(report, "synflow")
    assert dm.spearman_top == pytest.approx(1) and dm.spearman_all == pytest.approx(1)
    # ranks x = (1, 3, 2, 4), y = (4, 3, 2, 1): d^2 = 9 + 0 + 0 + 9: rho = 1 - 6 * 18 / (4 * 15) = -0.8
    assert dm.spearman_top_test == pytest.approx(-0.8) and dm.spearman_all_test == pytest.approx(-0.8)
    # pairs: (1,2) disc, (1,3) disc, (1,4) disc, (2,3) conc, (2,4) disc, (3,4) disc: tau = (1 - 5) / 6
    assert dm.kendall_all == pytest.approx(1) and dm.kendall_all_test == pytest.approx(-4 / 6)
    # a score has no test accuracy: the same score ranks against whole-dataset test accuracy
    assert syn.spearman_top == pytest.approx(-1) and syn.spearman_top_test == pytest.approx(1)
    assert syn.kendall_all_test == pytest.approx(1)


def test_studies_on_different_validation_splits_are_refused_naming_both_and_the_fix(storage):
    def split(fingerprint: str, fraction: float = 0.1, seed: int = 0) -> dict:
        return {"val_fraction": fraction, "seed": seed, "fingerprint": fingerprint}

    add_study(storage, "dm", descending(IDS[:3]), split=split("a" * 64))
    add_study(storage, "es", descending(IDS[:3]), kind="early-stop", split=split("b" * 64, 0.2, 1))
    add_study(storage, "w", descending(IDS[:3]), kind="whole", split=split("a" * 64))
    assert build_report(storage, ["dm"], "w").summary.method.tolist() == ["dm"]  # same split: fine
    with pytest.raises(StudyError) as err:
        build_report(storage, ["dm"], "w", early_stop="es")
    assert str(err.value) == (
        "studies 'es' and 'w' rank on different validation splits (fingerprints bbbbbbbbbbbb "
        "and aaaaaaaaaaaa); to compare them, run its command again into a new --study with "
        "--exclude-split 0.1 --split-seed 0"
    )
    add_study(storage, "dm2", descending(IDS[:3]), split=split("c" * 64))
    with pytest.raises(
        StudyError,
        match="condense its proxy set again, then search it into a new study, with --exclude-split 0.1 --split-seed 0",
    ):
        build_report(storage, ["dm", "dm2"], "w")


def test_an_unfinished_study_gets_the_top_set_of_its_space_and_the_command_that_completes_it(storage):
    space = {"name": "tiny", "size": 40}
    command = "proxynas search --proxy dm.safetensors --study dm"
    add_study(storage, "dm", descending(IDS[:20]), space=space, command=command)  # half the space finished
    add_study(storage, "done", descending(IDS), space=space)
    add_study(storage, "w", descending(IDS), kind="whole", space=space)
    report = build_report(storage, ["dm", "done"], "w", top=0.1)
    dm = row(report, "dm")
    assert report.top["dm"] == IDS[:4] and dm.n_top == 4  # 10% of 40, not 10% of the 20 that finished
    assert dm.n_unfinished == 20 and row(report, "done").n_unfinished == 0
    assert report.finish_commands == {"dm": command}
    assert (
        "dm: 20 of the 40 configurations of its space have no complete trial; its top 10% is counted against "
        "all of them, from what finished; complete it with the command below"
    ) in report.notes
    summary = pd.read_csv(write_report(report, storage.url.removeprefix("sqlite:///") + "-out")["summary"])
    assert summary.set_index("method").loc["dm", "n_unfinished"] == 20


def test_training_steps_are_shown_and_early_stopping_on_another_budget_is_refused_with_the_fix(storage):
    def protocol(steps: int, repeats: int = 5) -> dict:
        return {"steps": steps, "repeats": repeats, "batch_size": 250}

    add_study(storage, "dm", descending(IDS[:3]), protocol=protocol(400))
    add_study(storage, "random", descending(IDS[:3]), protocol=protocol(400))
    add_study(storage, "es", descending(IDS[:3]), kind="early-stop", protocol=protocol(400))
    add_study(storage, "w", descending(IDS[:3]), kind="whole", protocol=protocol(18000, 1))
    report = build_report(storage, ["dm", "random"], "w", early_stop="es")
    assert report.summary.train_steps.tolist() == [400, 400, 400]
    assert report.summary.repeats.tolist() == [5, 5, 5]
    whole = report.settings["whole_training"]  # the reference's cost, beside the methods' (no summary row)
    assert (whole["train_steps"], whole["repeats"], whole["selected"]) == (18000, 1, IDS[0])
    assert whole["train_hours"] == pytest.approx(3 * 60 / 3600)

    add_study(
        storage,
        "es100",
        descending(IDS[:3]),
        kind="early-stop",
        protocol=protocol(100),
        command="proxynas baseline --kind early-stop --dataset cifar10 --steps 100 --study es100",
    )
    with pytest.raises(StudyError) as err:
        build_report(storage, ["dm", "random"], "w", early_stop="es100")
    assert str(err.value) == (
        "early stopping ('es100') trains 100 steps per run but proxy study 'dm' trains 400, so they do not cost "
        "the same; train early stopping on the proxies' budget: proxynas baseline --kind early-stop --dataset "
        "cifar10 --steps 400 --study es100-400steps"
    )

    add_study(storage, "dm10", descending(IDS[:3]), protocol=protocol(100))  # another ipc: another budget
    report = build_report(storage, ["dm", "dm10"], "w", early_stop="es100")
    assert (
        "the proxy studies train different numbers of steps per run (dm 400, dm10 100); early stopping "
        "('es100') costs the same as those with 100" in report.notes
    )


def test_the_cli_tables_show_every_summary_column(capsys, storage, tmp_path):
    from proxynas.cli import ReportCommand

    add_study(storage, "dm", descending(IDS[:4]))
    add_study(storage, "w", descending(IDS[:4]))
    ReportCommand.show(build_report(storage, ["dm"], "w", top=2, k=2), "title", {})
    shown = capsys.readouterr().out
    headers = [line for line in shown.splitlines() if "┃" in line]  # the header row of each of the two tables
    assert len(headers) == 2 and all("method" in h for h in headers)
    assert "ρ top val" in headers[0] and "selected" in headers[1] and "steps" in headers[1]


def test_csv_columns_are_identifiers_with_integer_ranks(storage, tmp_path):
    add_study(storage, "dm", descending(IDS[:4]))
    add_study(storage, "es", {c: v for c, v in descending(IDS[:3]).items()}, kind="early-stop", method="early-stop")
    add_study(storage, "w", descending(IDS[:4]), kind="whole")
    report = build_report(storage, ["dm"], "w", early_stop="es", top=4)
    paths = write_report(report, tmp_path / "r")
    ranking = pd.read_csv(paths["ranking"])
    assert all(c.isidentifier() for c in ranking.columns), list(ranking.columns)
    assert "early_stop_rank" in ranking and "early_stop_test_acc" in ranking and "dm_test_acc" in ranking
    # written as integers ("1", not "1.0"), and empty where the study lacks the configuration
    lines = paths["ranking"].read_text().splitlines()
    header = lines[0].split(",")
    es_rank = [line.split(",")[header.index("early_stop_rank")] for line in lines[1:]]
    assert es_rank == ["1", "2", "3", ""]
    assert ranking.query("dm_rank == 1").config_id.tolist() == [IDS[0]]  # pandas-friendly: query works
    assert pd.read_csv(paths["summary"]).method.tolist() == ["dm", "early-stop"]  # no whole-against-whole row


def test_report_config_json_records_what_was_compared(storage, tmp_path):
    add_study(storage, "dm", descending(IDS[:3]))
    add_study(storage, "w", descending(IDS[:3]), kind="whole")
    report = build_report(storage, ["dm"], "w", top=3, k=2)
    command = "proxynas report --proxy-studies dm --whole w --top 3 --k 2"
    config = json.loads(write_report(report, tmp_path / "r", command=command)["config"].read_text())
    assert config["command"] == command and config["proxy_studies"] == ["dm"] and config["whole"] == "w"
    assert (config["top"], config["k"], config["dataset"]) == (3, 2, "cifar10")
    assert config["studies"] == {"dm": "dm", "whole": "w"} and config["notes"] == report.notes
    assert config["storage"] == storage.url and {"proxynas", "torch", "optuna"} <= config["versions"].keys()


def test_plots_have_titles_shared_axes_identity_and_labelled_bars(storage):
    add_study(storage, "dm", descending(IDS[:6]))
    add_study(storage, "random", {c: 0.5 + 0.01 * i for i, c in enumerate(IDS[:6])})
    add_study(storage, "syn", descending(IDS[:6], start=3e9, step=1e8), kind="zero-cost", method="synflow")
    add_study(storage, "w", descending(IDS[:6], start=0.9), kind="whole")
    report = build_report(storage, ["dm", "random"], "w", extra=["syn"], top=4)
    fig = top_plot(report)
    assert "whole-dataset training" in fig.get_suptitle() and "cifar10" in fig.get_suptitle()
    dm_ax, random_ax, syn_ax = [ax for ax in fig.axes if ax.get_visible()]
    assert dm_ax.get_shared_y_axes().joined(dm_ax, syn_ax)  # every panel: whole-dataset validation accuracy
    # each proxy its own x: a proxy a point wide is not squeezed into a range shared with another
    assert not dm_ax.get_shared_x_axes().joined(dm_ax, random_ax)
    assert dm_ax.get_xlim() == pytest.approx((0.867, 0.903)) and random_ax.get_xlim() == pytest.approx((0.517, 0.553))

    def identity(ax):
        return [list(line.get_xdata()) for line in ax.get_lines() if line.get_label() == "y = x"]

    # y: the top sets' whole-dataset accuracies, 0.85-0.90 padded to 0.845-0.905. y = x runs over the part of
    # dm's panel where the ranges meet, 0.867-0.903; it misses random's, and a score is no accuracy
    assert identity(dm_ax) == [pytest.approx([0.867, 0.903])] and identity(random_ax) == identity(syn_ax) == []
    assert [line.get_ydata() for line in dm_ax.get_lines()] == [pytest.approx([0.867, 0.903])]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "top-set configuration",
        "selected",
        "y = x",
    ]
    # the selected configuration is a labelled star: dm selects IDS[0]
    assert [t.get_text() for t in dm_ax.texts] == [row(report, "dm").selected] == [IDS[0]]
    bars = plot_correlations(report.summary).axes[0]
    assert bars.get_title() and [t.get_text() for t in bars.get_legend().get_texts()] == [
        "Spearman, its top set",
        "Spearman, all shared",
        "Kendall's tau, all shared",
    ]
    shown = {t.get_text() for t in bars.texts}
    assert f"{row(report, 'dm').spearman_all:.2f}" in shown and f"{row(report, 'random').kendall_all:.2f}" in shown


def test_the_top_scatter_gives_each_axis_its_own_padded_range(storage):
    ids = IDS[:4]
    add_study(storage, "dm", dict(zip(ids, (0.330, 0.327, 0.324, 0.320), strict=True)))  # a point wide
    add_study(storage, "w", dict(zip(ids, (0.70, 0.66, 0.68, 0.62), strict=True)), kind="whole")
    ax = next(a for a in top_plot(build_report(storage, ["dm"], "w", top=4)).axes if a.get_visible())
    # each range widened by a tenth of itself on either side, so no point sits on an edge
    assert ax.get_xlim() == pytest.approx((0.320 - 0.001, 0.330 + 0.001))
    assert ax.get_ylim() == pytest.approx((0.62 - 0.008, 0.70 + 0.008))
    assert not [line for line in ax.get_lines() if line.get_label() == "y = x"]  # the ranges do not meet
    assert padded(pd.Series([3e9, math.nan, 1e9])) == pytest.approx((0.8e9, 3.2e9))  # a score; NaN ignored
    assert padded(pd.Series([], dtype=float)) is None


def test_one_configuration_sits_mid_panel_with_its_label_inside_and_clear_of_the_title(storage):
    add_study(storage, "dm", {IDS[0]: 0.33})
    add_study(storage, "w", {IDS[0]: 0.65}, kind="whole")
    fig = top_plot(build_report(storage, ["dm"], "w"))
    ax = next(a for a in fig.axes if a.get_visible())
    assert ax.get_xlim() == pytest.approx((0.297, 0.363)) and ax.get_ylim() == pytest.approx((0.585, 0.715))
    fig.draw_without_rendering()  # lays the figure out, so that the texts have their places
    label, panel, title = ax.texts[0].get_window_extent(), ax.get_window_extent(), ax.title.get_window_extent()
    assert ax.texts[0].get_text() == IDS[0]
    assert panel.x0 < label.x0 < label.x1 < panel.x1 and panel.y0 < label.y0 < label.y1 < panel.y1
    assert not label.overlaps(title)
    suptitle = next(t for t in fig.texts if t.get_text() == fig.get_suptitle()).get_window_extent()
    assert 0 <= suptitle.x0 < suptitle.x1 <= fig.bbox.x1  # wrapped: one panel is narrower than the title


def test_a_panel_without_whole_dataset_results_says_so(storage):
    add_study(storage, "dm", descending(IDS[:2]))
    add_study(storage, "herding", descending(IDS[2:4]))
    add_study(storage, "w", descending(IDS[:2]), kind="whole")
    dm_ax, herding_ax = [
        a for a in top_plot(build_report(storage, ["dm", "herding"], "w", top=2)).axes if a.get_visible()
    ]
    assert [t.get_text() for t in herding_ax.texts] == ["no configuration of its top set\nhas a whole-dataset result"]
    assert [t.get_text() for t in dm_ax.texts] == [IDS[0]]
