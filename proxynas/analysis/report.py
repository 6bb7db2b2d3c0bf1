"""How far a proxy ranking can be trusted: rank correlations against whole-dataset training.

References:
- Zhao & Bilen, "Dataset Condensation with Distribution Matching" (WACV 2023), Table 5
  and Figure F8; docs/protocol.md §5 is the spec this module follows.
- Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching" (ICLR 2021):
  the NAS protocol and the 720-ConvNet space Table 5 reuses.

Every study holds one method's ranking: one COMPLETE trial per configuration, ranked by
validation accuracy (FAIL, PRUNED and WAITING trials do not count). A trial trained
several times (``--repeats``) is ranked by its mean; its standard deviation over the
repeats is the ranking's ``<method>_val_std``, and the summary's ``mean_val_std`` is
that spread averaged over the method's configurations (NaN where nothing records a
spread: zero-cost scores, studies from before repeats). Each method is compared with
the whole-dataset study:

- ``spearman_top``, the paper's metric: Spearman's rho between the method's and the
  whole-dataset validation accuracies over the method's own top 5% (36 of 720), using
  those configurations of the set that have a whole-dataset result. Whole-dataset
  training is the expensive part and need only cover the union of the methods' top
  sets (§5's note), so the ones it lacks are listed with a command that trains them.
  The top set is counted against the study's whole space (``planned_size``): a study
  that has not finished gets the same 36, filled from what it finished, and
  ``n_unfinished`` with a command that completes it.
- ``spearman_all``, ``kendall_all`` (tau-b) and ``topk_overlap``: over every
  configuration both studies hold. Where the whole-dataset study covers only the top
  sets, that is a hand-picked subset of the space, not a sample of it.
- ``*_test``: the same correlations of test accuracies (the top set still chosen by
  validation accuracy): Figure F8's axes, and most likely Table 5's figure. A zero-cost
  score has no test accuracy, so its one score ranks against both whole-dataset columns.
- ``selected``: the configuration the method ranks first, with its whole-dataset test
  accuracy (the paper's "selected architecture" column).
- ``train_steps`` and ``repeats``: what one candidate costs, as each study recorded it.

Studies ranked on different validation splits are refused, and so is early stopping
that trains another number of steps per run than the proxies (§5: the same cost); both
errors give the command that fixes them.

A correlation that is undefined (fewer than two configurations, or constant accuracies)
is NaN, and ``Report.notes`` says why: nothing is dropped silently. ``scatter_top.png``
plots the validation accuracies ``spearman_top`` uses.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import numbers
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from scipy import stats

from proxynas.core.networks import NetConfig
from proxynas.exceptions import StudyError, UsageError
from proxynas.nas.study import CONFIG_KEY, _sqlite_path, open_storage, open_study
from proxynas.runtime.outputs import write_json
from proxynas.runtime.provenance import versions

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "FRAME_COLUMNS",
    "SUMMARY_COLUMNS",
    "WHOLE",
    "Report",
    "build_report",
    "column_prefix",
    "parse_top",
    "planned_size",
    "study_frame",
    "study_top",
    "top_configs",
    "top_count",
    "write_report",
]

log = logging.getLogger(__name__)

AXES = ("depth", "width", "act", "norm", "pool")
FRAME_COLUMNS = ("config_id", *AXES, "params", "flops", "val_acc", "test_acc", "val_std", "test_std", "train_seconds")
SUMMARY_COLUMNS = (
    "method",
    "spearman_top",
    "spearman_top_test",
    "n_top",
    "n_top_missing",
    "n_unfinished",
    "spearman_all",
    "spearman_all_test",
    "kendall_all",
    "kendall_all_test",
    "n_shared",
    "topk_overlap",
    "selected",
    "selected_whole_test_acc",
    "selected_own_test_acc",
    "mean_val_std",
    "train_steps",
    "repeats",
    "train_hours",
)
WHOLE = "whole"  # the whole-dataset study's name in the report; a method of that name is renamed
# what a study's trial values are, by its "kind" attribute: the ranking's column suffix and the plots' words
MEASURES = {"zero-cost": ("score", "score at initialisation")}
ACCURACY = ("val_acc", "validation accuracy")  # every other kind
# what a kind's ranking is on the test side; a score has no test accuracy, so it ranks against both whole columns
TEST_SIDE = {"zero-cost": "val_acc"}
# (x, y) columns of a shared frame: the val-val correlation, and the test-test one (its x as TEST_SIDE)
VAL_VAL, TEST_TEST = ("val_acc", "val_acc_whole"), ("test_acc", "test_acc_whole")
_INFO = FRAME_COLUMNS[:8]  # what describes a configuration, whichever study it comes from
_MEASURED = FRAME_COLUMNS[8:]  # what its trial measured: floats, NaN where a study records none
_NAN = float("nan")


def _open(storage: str | RDBStorage) -> RDBStorage:
    """The storage behind a URL; a missing SQLite file is an error, not a new empty database."""
    if not isinstance(storage, str):
        return storage
    if storage.startswith("sqlite") and (path := _sqlite_path(storage)) is not None and not path.exists():
        raise StudyError(f"no database at {path}; give the --storage the searches wrote to")
    return open_storage(storage)


def study_frame(storage: str | RDBStorage, study_name: str) -> pd.DataFrame:
    """One row per configuration with a COMPLETE trial in the study; columns ``FRAME_COLUMNS``."""
    return _frame(open_study(_open(storage), study_name, create=False))


def _frame(study: optuna.Study) -> pd.DataFrame:
    rows: dict[str, dict] = {}
    extra: collections.Counter[str] = collections.Counter()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for t in sorted(complete, key=lambda t: t.number):
        cid = t.user_attrs.get(CONFIG_KEY)
        if cid is None:
            log.warning("study %r: complete trial %d has no %s; skipped", study.study_name, t.number, CONFIG_KEY)
        elif cid in rows:
            extra[cid] += 1
        else:
            rows[cid] = (
                {c: t.user_attrs.get(c, _NAN) for c in FRAME_COLUMNS}
                | _axes(cid)
                | {"config_id": cid, "val_acc": t.user_attrs.get("val_acc", t.value)}
            )
    for cid, n in sorted(extra.items()):
        log.warning("study %r has %d complete trials of %s; the report keeps the first", study.study_name, n + 1, cid)
    frame = pd.DataFrame(list(rows.values()), columns=list(FRAME_COLUMNS))
    frame = frame.astype({c: float for c in _MEASURED})
    return frame.sort_values("config_id", ignore_index=True)


def _axes(config_id: str) -> dict[str, object]:
    """A configuration's axes, read off its id: trials record them only there (older studies also as user attrs)."""
    try:
        return dataclasses.asdict(NetConfig.from_id(config_id))
    except UsageError:  # not a ConvNet id: whatever user attributes the trial has
        return {}


_BAD_TOP = "top must be a fraction in (0, 1) such as 0.05, or a count >= 1 such as 36; not {!r}"


def top_count(top: float | int, n: int) -> int:
    """How many of ``n`` configurations ``top`` selects.

    A fraction 0 < top < 1 selects ``max(1, round(top * n))`` (Python's round, half to
    even, as ``baselines.select_configs``): 5% of 720 is 36. A whole number >= 1 (an
    int, or a float such as 36.0 from a command line) is a count; never more than ``n``.
    """
    if isinstance(top, numbers.Real) and not isinstance(top, bool):
        if 0 < top < 1:
            return min(n, max(1, round(top * n)))
        if top >= 1 and float(top).is_integer():
            return min(n, int(top))
    raise UsageError(_BAD_TOP.format(top))


def parse_top(text: str) -> float | int:
    """A top set as typed on a command line: '0.05' -> 0.05, '36' or '36.0' -> 36; checked as ``top_count``."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(_BAD_TOP.format(text)) from None
    top_count(value, 1)
    return int(value) if value >= 1 else value


def top_configs(frame: pd.DataFrame, top: float | int, by: str = "val_acc", of: int | None = None) -> list[str]:
    """The best configurations of ``frame`` by ``by`` (descending), best first; ties go to the smaller id.

    ``top`` is counted against ``of`` configurations (default: the frame's), so that a
    study that has not finished its space still gets the top set of the space (5% of
    720 is 36), filled from what it finished, not 5% of what finished.
    """
    ordered = frame.sort_values([by, "config_id"], ascending=[False, True])
    return ordered["config_id"].head(top_count(top, len(frame) if of is None else of)).tolist()


def planned_size(study: optuna.Study) -> int | None:
    """How many configurations the study's search space holds (None: the study recorded no space)."""
    return study.user_attrs.get("space", {}).get("size")


def study_top(storage: str | RDBStorage, study_name: str, top: float | int) -> list[str]:
    """A study's top set by validation accuracy, best first, counted against its space (see top_configs)."""
    study = open_study(_open(storage), study_name, create=False)
    return top_configs(_frame(study), top, of=planned_size(study))


def _describe_top(top: float | int) -> str:
    return f"top {top * 100:g}%" if 0 < top < 1 else f"top {int(top)}"


@dataclass
class Report:
    ranking: pd.DataFrame  # one row per configuration in any study: info, then per method (as column_prefix):
    #                        <m>_val_acc (or _score), <m>_test_acc (accuracies only), <m>_val_std, <m>_rank (an int)
    summary: pd.DataFrame  # one row per method compared with the whole-dataset study; columns SUMMARY_COLUMNS
    missing: dict[str, list[str]]  # method -> its top-set ids lacking a whole-dataset result (only where some do)
    fill_commands: list[str]  # commands that train the missing configurations on the whole dataset
    finish_commands: dict[str, str]  # method -> the command that completes its unfinished study (where recorded)
    notes: list[str]  # undefined statistics and other caveats, one sentence each
    studies: dict[str, str]  # method -> study name (whole included)
    top: dict[str, list[str]]  # method -> its top set, best first
    measures: dict[str, tuple[str, str]]  # method -> (column suffix, words) of what its values are: MEASURES
    settings: dict[str, Any] = field(default_factory=dict)  # what build_report was asked: studies, top, k, storage


def build_report(
    storage: str | RDBStorage,
    proxy_studies: Sequence[str],
    whole: str,
    early_stop: str | None = None,
    extra: Sequence[str] = (),
    top: float | int = 0.05,
    k: int = 10,
) -> Report:
    """Compare each method's study (proxies, early stopping, any extra) with the whole-dataset study.

    Methods are named by their study's ``method`` attribute, or by the study name where
    that is missing or taken by another study (then ``"<method> (<study>)"``).
    """
    top_count(top, 1)  # a bad --top fails before any database work
    if k < 1:
        raise UsageError(f"k must be >= 1 for the top-k overlap; not {k}")
    names = [*proxy_studies, *([early_stop] if early_stop else []), *extra]
    if not names:
        raise UsageError("nothing to compare with the whole-dataset study: name a proxy, early-stop or extra study")
    twice = sorted(n for n, c in collections.Counter([*names, whole]).items() if c > 1)
    if twice:
        raise UsageError(f"study {twice[0]!r} is named twice; each study can appear in a report once")
    rdb = _open(storage)
    studies = {n: open_study(rdb, n, create=False) for n in [*names, whole]}
    _check_one_dataset(studies)
    _check_one_split(studies, whole)
    methods = _method_names({n: studies[n] for n in names}) | {WHOLE: whole}
    frames = {m: _frame(studies[s]) for m, s in methods.items()}
    kinds = {m: studies[s].user_attrs.get("kind") for m, s in methods.items()}
    measures = {m: MEASURES.get(kinds[m], ACCURACY) for m in methods}
    budgets = {n: _budget(studies[n]) for n in [*names, whole]}

    notes: list[str] = []
    if early_stop:
        _check_equal_cost(studies, budgets, proxy_studies, early_stop, rdb, notes)
    if (kind := studies[whole].user_attrs.get("kind", WHOLE)) != WHOLE:
        notes.append(f"the whole-dataset study {whole!r} has kind {kind!r}, not {WHOLE!r}")
    rows, missing, finish = [], {}, {}
    tops = {WHOLE: top_configs(frames[WHOLE], top, of=planned_size(studies[whole]))}
    for m, frame in frames.items():
        if m == WHOLE:
            continue  # whole against whole says nothing; it covers the top sets only, by design (fill_commands)
        study = studies[methods[m]]
        row, tops[m] = _compare(
            m, frame, frames[WHOLE], top, k, notes, planned_size(study), TEST_SIDE.get(kinds[m], "test_acc")
        )
        rows.append(row | budgets[methods[m]])
        # the selected configuration heads the top set, so a missing selection is listed here too
        if lacking := [c for c in tops[m] if c not in set(frames[WHOLE].config_id)]:
            missing[m] = lacking
        if row["n_unfinished"]:
            command = study.user_attrs.get("command")
            notes.append(
                f"{m}: {row['n_unfinished']} of the {planned_size(study)} configurations of its space have "
                f"no complete trial; its {_describe_top(top)} is counted against all of them, from what "
                "finished; "
                + (
                    "complete it with the command below"
                    if command
                    else f"complete it by re-running what filled study {methods[m]!r}"
                )
            )
            if command:
                finish[m] = command  # re-running a search continues it
    todo = sorted({c for ids in missing.values() for c in ids})
    fill = [_with_flags(_baseline_command(studies[whole], rdb, WHOLE), {"--configs": ",".join(todo)})] if todo else []
    settings = {
        "whole": whole,
        "proxy_studies": list(proxy_studies),
        "early_stop": early_stop,
        "extra": list(extra),
        "top": top,
        "k": k,
        "storage": _safe_url(rdb),
        "whole_training": _reference(frames[WHOLE], tops[WHOLE], budgets[whole]),
        "dataset": next((s.user_attrs["dataset"] for s in studies.values() if "dataset" in s.user_attrs), None),
    }
    return Report(
        _ranking(frames, measures),
        pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)),
        missing,
        fill,
        finish,
        notes,
        methods,
        tops,
        measures,
        settings,
    )


def _check_one_dataset(studies: dict[str, optuna.Study]) -> None:
    datasets = {n: s.user_attrs["dataset"] for n, s in studies.items() if "dataset" in s.user_attrs}
    if len(set(datasets.values())) > 1:
        listing = ", ".join(f"{n}: {d}" for n, d in datasets.items())
        raise StudyError(f"the studies are on different datasets ({listing}); compare studies of one dataset")


# what rebuilds a study on another validation split, by kind; a proxy set holds its split out when condensed
_SPLIT_FIX = {"proxy": "condense its proxy set again, then search it into a new study, with"}
_SPLIT_FIX_OTHER = "run its command again into a new --study with"


def _check_one_split(studies: dict[str, optuna.Study], whole: str) -> None:
    """Refuse studies ranked on different validation splits: their accuracies are not of the same images."""
    splits = {n: s.user_attrs["split"] for n, s in studies.items() if "split" in s.user_attrs}
    ref = whole if whole in splits else next(iter(splits), None)
    for n, split in splits.items():
        if split["fingerprint"] != splits[ref]["fingerprint"]:
            want = splits[ref]
            fix = _SPLIT_FIX.get(studies[n].user_attrs.get("kind"), _SPLIT_FIX_OTHER)
            raise StudyError(
                f"studies {n!r} and {ref!r} rank on different validation splits (fingerprints "
                f"{split['fingerprint'][:12]} and {want['fingerprint'][:12]}); to compare them, "
                f"{fix} --exclude-split {want['val_fraction']} --split-seed {want['seed']}"
            )


def _budget(study: optuna.Study) -> dict[str, float]:
    """The training steps of one run of a candidate and the runs per candidate, as recorded (NaN: unrecorded)."""
    protocol = study.user_attrs.get("protocol", {})
    return {
        column: _NAN if protocol.get(key) is None else protocol[key]
        for column, key in (("train_steps", "steps"), ("repeats", "repeats"))
    }


def _check_equal_cost(
    studies: dict[str, optuna.Study],
    budgets: dict[str, dict[str, float]],
    proxy_studies: Sequence[str],
    early_stop: str,
    storage: RDBStorage,
    notes: list[str],
) -> None:
    """Early stopping must train as many steps as the proxies (docs/protocol.md §5), or refuse with the fix."""
    steps = {n: budgets[n]["train_steps"] for n in [*proxy_studies, early_stop]}
    unknown = sorted(n for n, v in steps.items() if math.isnan(v))
    if unknown:
        notes.append(
            f"training steps are not recorded by {', '.join(map(repr, unknown))}, so equal cost with "
            "early stopping is not checked there"
        )
    proxy = {n: int(v) for n, v in steps.items() if n != early_stop and not math.isnan(v)}
    if len(set(proxy.values())) > 1:
        listing = ", ".join(f"{n} {v}" for n, v in proxy.items())
        notes.append(
            f"the proxy studies train different numbers of steps per run ({listing}); early stopping "
            f"({early_stop!r}) costs the same as those with {steps[early_stop]:g}"
        )
    elif proxy and not math.isnan(steps[early_stop]) and steps[early_stop] not in proxy.values():
        name, want = next(iter(proxy.items()))
        fixed = _with_flags(
            _baseline_command(studies[early_stop], storage, "early-stop"),
            {"--steps": want, "--study": f"{early_stop}-{want}steps"},
        )
        raise StudyError(
            f"early stopping ({early_stop!r}) trains {steps[early_stop]:g} steps per run but proxy "
            f"study {name!r} trains {want}, so they do not cost the same; train early stopping on "
            f"the proxies' budget: {fixed}"
        )


def _method_names(studies: dict[str, optuna.Study]) -> dict[str, str]:
    """Method name -> study name (see build_report)."""
    wanted = {n: str(s.user_attrs.get("method", n)) for n, s in studies.items()}
    taken = collections.Counter([*wanted.values(), WHOLE])
    return {(w if taken[w] == 1 else f"{w} ({n})"): n for n, w in wanted.items()}


def _compare(
    method: str,
    frame: pd.DataFrame,
    whole: pd.DataFrame,
    top: float | int,
    k: int,
    notes: list[str],
    planned: int | None = None,
    test_side: str = "test_acc",
) -> tuple[dict, list[str]]:
    """The method's summary row and its top set (counted against ``planned`` configurations, see top_configs).

    ``test_side``: the method's column ranked against whole-dataset test accuracy (TEST_SIDE).
    """
    if frame.empty:
        notes.append(f"{method}: the study has no complete trials")
    # (configs both studies hold) x (config_id, val_acc, test_acc, ..., val_acc_whole, test_acc_whole)
    shared = frame.merge(whole[["config_id", "val_acc", "test_acc"]], on="config_id", suffixes=("", "_whole"))
    shared["test_acc"] = shared[test_side]  # what ranks against test_acc_whole (TEST_SIDE)
    top_ids = top_configs(frame, top, of=planned)
    in_top = shared[shared.config_id.isin(top_ids)]
    label = _describe_top(top)
    if len(in_top) < len(top_ids):
        notes.append(
            f"{method}: {len(top_ids) - len(in_top)} of its {len(top_ids)} {label} configs lack "
            f"whole-dataset results; its Spearman over the {label} uses the other {len(in_top)}"
        )
    selected = top_ids[0] if top_ids else None
    whole_test = whole.set_index("config_id").test_acc
    top_where, all_where = "with whole-dataset results", "shared with the whole-dataset study"

    def correlations(fn: Callable, pairs: pd.DataFrame, what: str, where: str) -> tuple[float, float]:
        """(val-val, test-test) of ``fn``; the test-test one notes only what the val-val one did not."""
        val = _correlation(fn, pairs, VAL_VAL, f"{method}: {what}", where, method, notes)
        test = _correlation(
            fn, pairs, TEST_TEST, f"{method}: test-accuracy {what}", where, method, [] if math.isnan(val) else notes
        )
        return val, test

    spearman_top = correlations(stats.spearmanr, in_top, f"Spearman over the {label}", top_where)
    spearman_all = correlations(stats.spearmanr, shared, "Spearman over all shared configs", all_where)
    kendall_all = correlations(stats.kendalltau, shared, "Kendall's tau over all shared configs", all_where)
    row = {
        "method": method,
        "spearman_top": spearman_top[0],
        "spearman_top_test": spearman_top[1],
        "n_top": len(in_top),
        "n_top_missing": len(top_ids) - len(in_top),
        "n_unfinished": max(0, (planned or 0) - len(frame)),
        "spearman_all": spearman_all[0],
        "spearman_all_test": spearman_all[1],
        "kendall_all": kendall_all[0],
        "kendall_all_test": kendall_all[1],
        "n_shared": len(shared),
        "topk_overlap": _overlap(shared, k, method, notes),
        "selected": selected,
        "selected_whole_test_acc": whole_test.get(selected, _NAN),
        "selected_own_test_acc": frame.set_index("config_id").test_acc.get(selected, _NAN),
        "mean_val_std": frame.val_std.mean(),  # NaN where the study records no spread (zero-cost, older studies)
        "train_hours": frame.train_seconds.sum(min_count=1) / 3600,
    }
    return row, top_ids


def _correlation(
    fn: Callable, pairs: pd.DataFrame, columns: tuple[str, str], what: str, where: str, method: str, notes: list[str]
) -> float:
    """``fn``'s statistic of the ``columns`` (method, whole) of ``pairs``, or NaN and a note saying why it is undefined.

    Undefined inputs are caught here rather than left to scipy, which would return NaN
    with a warning and no reason.
    """
    x, y, n = pairs[columns[0]], pairs[columns[1]], len(pairs)
    if n < 2:
        why = f"{n} config{'' if n == 1 else 's'} {where}"
    elif x.nunique() == 1 or y.nunique() == 1:
        who = method if x.nunique() == 1 else "whole-dataset"
        why = f"constant {who} accuracies over the {n} configs {where}"
    else:
        return float(fn(x, y).statistic)
    notes.append(f"{what} undefined ({why})")
    return _NAN


def _overlap(shared: pd.DataFrame, k: int, method: str, notes: list[str]) -> float:
    """|top-k(method) ∩ top-k(whole)| / k over the shared configurations; k shrinks to their number."""
    if shared.empty:
        notes.append(f"{method}: top-{k} overlap undefined (no configs shared with the whole-dataset study)")
        return _NAN
    if len(shared) < k:
        notes.append(f"{method}: top-{k} overlap over only {len(shared)} shared configs, so divided by {len(shared)}")
    kk = min(k, len(shared))
    return len(set(top_configs(shared, kk)) & set(top_configs(shared, kk, by="val_acc_whole"))) / kk


def _reference(whole: pd.DataFrame, top: list[str], budget: dict[str, float]) -> dict[str, Any]:
    """What whole-dataset training costs and selects: the reference the methods are compared with
    (no summary row of its own: its correlations with itself are 1 by definition). NaN is None here."""
    selected = top[0] if top else None
    values = {
        "selected": selected,
        "selected_test_acc": whole.set_index("config_id").test_acc.get(selected, _NAN),
        **budget,
        "train_hours": whole.train_seconds.sum(min_count=1) / 3600,
    }
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}


def _safe_url(storage: RDBStorage) -> str:
    """The storage URL with its password hidden, fit to print or to write into a file."""
    return sqlalchemy.engine.make_url(storage.url).render_as_string(hide_password=True)


def _baseline_command(study: optuna.Study, storage: RDBStorage, kind: str) -> str:
    """The command a baseline study was filled with (recorded without --configs), else the generic one."""
    base = study.user_attrs.get("command")
    if base is None:  # a study filled some other way (its password hidden, not printed)
        url = _safe_url(storage)
        dataset = study.user_attrs.get("dataset")
        base = shlex.join(
            [
                "proxynas",
                "baseline",
                "--kind",
                kind,
                *(["--dataset", dataset] if dataset else []),
                "--study",
                study.study_name,
                "--storage",
                url,
            ]
        )
    return base


def _with_flags(command: str, flags: dict[str, object]) -> str:
    """``command`` with each of ``flags`` set to its value, any value it gave before dropped."""
    kept, words = [], iter(shlex.split(command))
    for word in words:
        if word in flags:
            next(words, None)  # its value
        elif word.partition("=")[0] not in flags:
            kept.append(word)
    return shlex.join([*kept, *(str(w) for flag, value in flags.items() for w in (flag, value))])


def _ranking(frames: dict[str, pd.DataFrame], measures: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """One row per configuration in any study, best whole-dataset rank first (see Report)."""
    known = [f[list(_INFO)] for f in frames.values() if not f.empty]
    info = pd.concat(known) if known else pd.DataFrame(columns=list(_INFO))
    ranking = info.drop_duplicates("config_id").set_index("config_id")
    for m, frame in frames.items():
        by_id, c = frame.set_index("config_id"), column_prefix(m)
        acc = by_id.val_acc
        ranking[f"{c}_{measures[m][0]}"] = acc
        if measures[m] == ACCURACY:  # a score has no test side
            ranking[f"{c}_test_acc"] = by_id.test_acc  # of the network trained on this method's data
        ranking[f"{c}_val_std"] = by_id.val_std
        # 1 = best; ties share the best rank; <NA> where the study lacks the configuration
        ranking[f"{c}_rank"] = acc.rank(ascending=False, method="min").astype("Int64")
    ranking = ranking.reset_index()
    return ranking.sort_values([f"{WHOLE}_rank", "config_id"], na_position="last", ignore_index=True)


def column_prefix(method: str) -> str:
    """A method's name as the prefix of its ranking columns: an identifier ("early-stop" -> "early_stop"),
    so that ``frame.early_stop_rank`` and ``df.query`` work on the CSV."""
    return re.sub(r"\W+", "_", method).strip("_") or "method"


def write_report(report: Report, out_dir: str | Path, command: str | None = None) -> dict[str, Path]:
    """Write ranking.csv, summary.csv, scatter_top.png, correlations.png and config.json (replacing old ones).

    config.json records what was compared and how (``Report.settings``), the command line
    (``command``), the studies behind each method, the notes and the software versions.

    The CSVs keep floats at full precision (shortest round-trip repr), so ``pd.read_csv``
    gives the frames back exactly (pandas 2.x: pass ``float_precision="round_trip"``).
    The plots use matplotlib's object API, not pyplot: no backend is switched and no
    global state is touched.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "ranking": out / "ranking.csv",
        "summary": out / "summary.csv",
        "scatter_top": out / "scatter_top.png",
        "correlations": out / "correlations.png",
        "config": out / "config.json",
    }
    report.ranking.to_csv(paths["ranking"], index=False)
    report.summary.to_csv(paths["summary"], index=False)
    _plot_top(report).savefig(paths["scatter_top"], dpi=120)
    _plot_correlations(report.summary).savefig(paths["correlations"], dpi=120)
    write_json(
        paths["config"],
        {
            "command": command,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **report.settings,
            "studies": report.studies,
            "notes": report.notes,
            "versions": versions(),
        },
    )
    return paths


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure  # imported late: only writing plots needs matplotlib

    return Figure(figsize=(width, height), layout="constrained")


def _plot_top(report: Report) -> Figure:
    """Figure F8: per method, its values (x) against the whole dataset's validation accuracy (y) over its
    top set; the panels share the y axis, and the x axis where x is an accuracy too (then y = x is drawn).
    The configuration the method selects is a star, labelled with its id."""
    rows = {r.method: r for r in report.summary.itertuples()}
    cols = max(1, min(3, len(rows)))
    nrows = max(1, math.ceil(len(rows) / cols))
    fig = _figure(4 * cols, 3.6 * nrows + 0.4)
    axes = fig.subplots(nrows, cols, squeeze=False, sharey=True).ravel()
    fig.suptitle(
        f"Each proxy's {_describe_top(report.settings.get('top', 0.05))} against whole-dataset training"
        + (f" ({report.settings['dataset']})" if report.settings.get("dataset") else "")
    )
    ranking, y = report.ranking, f"{WHOLE}_val_acc"
    accuracy_axes = []
    for ax, (method, row) in zip(axes, rows.items()):
        suffix, words = report.measures[method]
        x = f"{column_prefix(method)}_{suffix}"
        points = ranking[ranking.config_id.isin(report.top[method]) & ranking[y].notna()]
        ax.scatter(points[x], points[y], s=18, label="top-set configuration")
        chosen = points[points.config_id == row.selected]
        if not chosen.empty:
            ax.scatter(chosen[x], chosen[y], s=120, marker="*", color="tab:red", zorder=3, label="selected")
            ax.annotate(
                row.selected,
                (chosen[x].iloc[0], chosen[y].iloc[0]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color="tab:red",
            )
        if (suffix, words) == ACCURACY:
            if accuracy_axes:
                ax.sharex(accuracy_axes[0])
            accuracy_axes.append(ax)
        else:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))  # synflow scores run to 1e20 and more
        rho = "undefined" if math.isnan(row.spearman_top) else f"{row.spearman_top:.2f}"
        ax.set_title(f"{method}: Spearman {rho} (n={row.n_top})", fontsize=10)
        ax.set_xlabel(f"{method} {words}")
        ax.set_ylabel("whole-dataset validation accuracy")
    if accuracy_axes:  # y = x over the shared range: above it, whole-dataset training does better
        ax0 = accuracy_axes[0]
        lo = min(ax0.get_xlim()[0], ax0.get_ylim()[0])
        hi = max(ax0.get_xlim()[1], ax0.get_ylim()[1])
        for ax in accuracy_axes:
            ax.plot([lo, hi], [lo, hi], linestyle="--", color="grey", linewidth=0.8, label="y = x")
        ax0.set_xlim(lo, hi)
        ax0.set_ylim(lo, hi)
        ax0.legend(fontsize=7, loc="lower right")
    for ax in axes[len(rows) :]:
        ax.set_visible(False)
    return fig


# the bars of the correlations plot: (summary column, legend label)
_BARS = (
    ("spearman_top", "Spearman, its top set"),
    ("spearman_all", "Spearman, all shared"),
    ("kendall_all", "Kendall's tau, all shared"),
)


def _plot_correlations(summary: pd.DataFrame) -> Figure:
    """Spearman over each method's top set, and Spearman and Kendall over all shared configurations,
    side by side, each bar labelled with its value ("n/a" where it is undefined)."""
    fig = _figure(max(7.0, 1.6 * len(summary)), 4.0)
    ax = fig.subplots()
    width = 0.8 / len(_BARS)
    for j, (column, label) in enumerate(_BARS):
        at = [i + (j - (len(_BARS) - 1) / 2) * width for i in range(len(summary))]
        bars = ax.bar(at, summary[column].fillna(0.0), width=width, label=label)
        ax.bar_label(
            bars, labels=["n/a" if math.isnan(v) else f"{v:.2f}" for v in summary[column]], fontsize=7, padding=2
        )
    ax.set_xticks(list(range(len(summary))), summary.method, rotation=20, ha="right")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylim(-1.15, 1.15)
    ax.set_ylabel("rank correlation with the whole dataset")
    ax.set_title("Rank correlation with whole-dataset training (validation accuracy)", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    return fig
