"""How far a method's ranking agrees with whole-dataset training: the report's summary row.

References:
- Zhao & Bilen, "Dataset Condensation with Distribution Matching" (WACV 2023), Table 5
  and Figure F8; docs/protocol.md §5 is the spec this module follows.

A method's ranking (``nas.results.study_frame``) is compared with the whole-dataset
study's:

- ``spearman_top``, the paper's metric: Spearman's rho between the method's and the
  whole-dataset validation accuracies over the method's own top 5% (36 of 720), using
  those configurations of the set that have a whole-dataset result. Whole-dataset
  training is the expensive part and need only cover the union of the methods' top
  sets (§5's note). The top set is counted against the study's whole space
  (``planned``): a study that has not finished gets the same 36, filled from what it
  finished, and ``n_unfinished`` says how many it lacks.
- ``spearman_all``, ``kendall_all`` (tau-b) and ``topk_overlap``: over every
  configuration both studies hold. Where the whole-dataset study covers only the top
  sets, that is a hand-picked subset of the space, not a sample of it.
- ``*_test``: the same correlations of test accuracies (the top set still chosen by
  validation accuracy): Figure F8's axes, and most likely Table 5's figure. A zero-cost
  score has no test accuracy, so its one score ranks against both whole-dataset columns
  (its kind's ``test_side``).
- ``selected``: the configuration the method ranks first, with its whole-dataset test
  accuracy (the paper's "selected architecture" column).
- ``mean_val_std``: the spread over repeats averaged over the method's configurations
  (NaN where nothing records a spread: zero-cost scores, studies from before repeats).

A correlation that is undefined (fewer than two configurations, or constant accuracies)
is NaN, and a note says why: nothing is dropped silently. Where the top set itself is
too small for Spearman (a slice of a few configurations at the default 5%),
``top_advice`` says so once for the methods it concerns, with a ``--top`` that works,
and a k above the shared configurations is capped with a note giving both numbers.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
from scipy import stats

from proxynas.nas.results import top_configs, top_count, top_label

__all__ = [
    "DEFAULT_K",
    "DEFAULT_TOP",
    "MIN_PAIRS",
    "RANKING_COLUMNS",
    "SELECTION_COLUMNS",
    "SUMMARY_COLUMNS",
    "TEST_TEST",
    "VAL_VAL",
    "compare",
    "space_size",
    "top_advice",
    "whole_reference",
]

DEFAULT_TOP = 0.05  # the paper's top set: 5% of the space (36 of 720)
DEFAULT_K = 10  # k of the top-k overlap
MIN_PAIRS = 2  # the fewest configurations a rank correlation is defined on

# The summary's columns after "method", in two groups: how each ranking agrees with the whole-dataset one,
# and what each method selects and costs (the CLI prints one table per group, so that neither is squeezed)
RANKING_COLUMNS = (
    "spearman_top",
    "spearman_top_test",
    "n_top",
    "n_top_missing",
    "spearman_all",
    "spearman_all_test",
    "kendall_all",
    "kendall_all_test",
    "n_shared",
    "topk_overlap",
)
SELECTION_COLUMNS = (
    "selected",
    "selected_whole_test_acc",
    "selected_own_test_acc",
    "mean_val_std",
    "n_unfinished",
    "train_steps",
    "repeats",
    "train_hours",
)
SUMMARY_COLUMNS = ("method", *RANKING_COLUMNS, *SELECTION_COLUMNS)
# (x, y) columns of a shared frame: the val-val correlation, and the test-test one (its x as the kind's test_side)
VAL_VAL, TEST_TEST = ("val_acc", "val_acc_whole"), ("test_acc", "test_acc_whole")
_NAN = float("nan")


def compare(
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

    ``test_side``: the method's column ranked against whole-dataset test accuracy (its kind's ``test_side``).
    """
    if frame.empty:
        notes.append(f"{method}: the study has no complete trials")
    # (configs both studies hold) x (config_id, val_acc, test_acc, ..., val_acc_whole, test_acc_whole)
    shared = frame.merge(whole[["config_id", "val_acc", "test_acc"]], on="config_id", suffixes=("", "_whole"))
    shared["test_acc"] = shared[test_side]  # what ranks against test_acc_whole
    top_ids = top_configs(frame, top, of=planned)
    # a top set too small for Spearman is explained once for every method by top_advice, not again here
    top_notes = [] if top_count(top, space_size(frame, planned)) < MIN_PAIRS else notes
    in_top = shared[shared.config_id.isin(top_ids)]
    label = top_label(top)
    if len(in_top) < len(top_ids):
        notes.append(
            f"{method}: {len(top_ids) - len(in_top)} of its {len(top_ids)} {label} configs lack "
            f"whole-dataset results; its Spearman over the {label} uses the other {len(in_top)}"
        )
    selected = top_ids[0] if top_ids else None
    whole_test = whole.set_index("config_id").test_acc
    top_where, all_where = "with whole-dataset results", "shared with the whole-dataset study"

    def correlations(fn: Callable, pairs: pd.DataFrame, what: str, where: str, noted: list[str]) -> tuple[float, float]:
        """(val-val, test-test) of ``fn``; the test-test one notes only what the val-val one did not."""
        val = _correlation(fn, pairs, VAL_VAL, f"{method}: {what}", where, method, noted)
        test = _correlation(
            fn, pairs, TEST_TEST, f"{method}: test-accuracy {what}", where, method, [] if math.isnan(val) else noted
        )
        return val, test

    spearman_top = correlations(stats.spearmanr, in_top, f"Spearman over the {label}", top_where, top_notes)
    spearman_all = correlations(stats.spearmanr, shared, "Spearman over all shared configs", all_where, notes)
    kendall_all = correlations(stats.kendalltau, shared, "Kendall's tau over all shared configs", all_where, notes)
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
    if n < MIN_PAIRS:
        why = f"{n} config{'' if n == 1 else 's'} {where}"
    elif x.nunique() == 1 or y.nunique() == 1:
        who = method if x.nunique() == 1 else "whole-dataset"
        why = f"constant {who} accuracies over the {n} configs {where}"
    else:
        return float(fn(x, y).statistic)
    notes.append(f"{what} undefined ({why})")
    return _NAN


def _overlap(shared: pd.DataFrame, k: int, method: str, notes: list[str]) -> float:
    """|top-k(method) ∩ top-k(whole)| / k over the shared configurations; k is capped at their number, with a note.

    A k that takes every shared configuration makes both top-k sets the same, so the
    overlap is 1 whatever the ranking: the note says so and gives a k that measures something.
    """
    n = len(shared)
    if n == 0:
        notes.append(f"{method}: top-{k} overlap undefined (no configs shared with the whole-dataset study)")
        return _NAN
    if k >= n:
        configs = f"{n} config{'' if n == 1 else 's'}"
        took = f"--k {k} is more than the {configs}" if k > n else f"--k {k} takes all {configs}"
        capped = f", so k is capped at {n}" if k > n else ""
        smaller = f"; give a smaller k, e.g. --k {n // 2}" if n >= MIN_PAIRS else ""
        notes.append(
            f"{method}: {took} shared with the whole-dataset study{capped}, where the top-k overlap is 1 "
            f"whatever the ranking{smaller}"
        )
    kk = min(k, n)
    return len(set(top_configs(shared, kk)) & set(top_configs(shared, kk, by="val_acc_whole"))) / kk


def space_size(frame: pd.DataFrame, planned: int | None) -> int:
    """How many configurations a top set is counted against: the study's space, else what it finished."""
    return len(frame) if planned is None else planned


def top_advice(top: float | int, spaces: Mapping[str, int]) -> list[str]:
    """One note per space size where ``top`` selects too few configurations for Spearman, naming a --top that works.

    ``spaces``: method -> the configurations its top set is counted against (``space_size``).
    The --top it suggests is the paper's 5% as a count, or all ``n`` where that still
    selects too few (a slice of a few configurations): Spearman over the top set is then
    Spearman over all, the most a slice can say.
    """
    too_few = collections.defaultdict(list)
    for method, n in spaces.items():
        if n and top_count(top, n) < MIN_PAIRS:
            too_few[n].append(method)
    notes = []
    for n, methods in too_few.items():
        why = (
            f"{', '.join(methods)}: the {top_label(top)} of {n} configuration{'' if n == 1 else 's'} selects "
            f"{top_count(top, n)}, and Spearman needs {MIN_PAIRS}, so Spearman over the top set is undefined"
        )
        if n < MIN_PAIRS:
            notes.append(f"{why}; no --top can help: search more configurations")
            continue
        paper = top_count(DEFAULT_TOP, n)
        fix = f"--top {paper} (the {top_label(DEFAULT_TOP)})" if paper >= MIN_PAIRS else f"--top {n} (all {n})"
        notes.append(f"{why}; ask for more with a count, e.g. {fix}")
    return notes


def whole_reference(whole: pd.DataFrame, top: list[str], budget: dict[str, float]) -> dict[str, Any]:
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
