"""Each method's ranking side by side: the report's ranking table, one row per configuration.

A method is one study compared with the whole-dataset study, which is the method
``WHOLE`` (its kind's name; a study whose method is called that is renamed). Its ranking is the
study's frame (``nas.results.study_frame``). The table holds what describes each
configuration (``nas.results.CONFIG_COLUMNS``), then per method, under its column
prefix: its values (``<m>_val_acc``, or ``<m>_score`` for a zero-cost score, as its
kind's ``Measure`` says), the test accuracy of the network trained on its data
(kinds that train), the spread over repeats and its rank (1 = best).
"""

from __future__ import annotations

import collections
import re

import optuna
import pandas as pd

from proxynas.nas.kinds import WHOLE, StudyKind
from proxynas.nas.results import CONFIG_COLUMNS

__all__ = ["WHOLE", "column_prefix", "method_names", "ranking_table"]


def method_names(studies: dict[str, optuna.Study]) -> dict[str, str]:
    """Method name -> study name: the study's ``method`` attribute, or its name where that is missing, and
    ``"<method> (<study>)"`` where two studies (or a study and ``WHOLE``) would share one."""
    wanted = {n: str(s.user_attrs.get("method", n)) for n, s in studies.items()}
    taken = collections.Counter([*wanted.values(), WHOLE])
    return {(w if taken[w] == 1 else f"{w} ({n})"): n for n, w in wanted.items()}


def column_prefix(method: str) -> str:
    """A method's name as the prefix of its ranking columns: an identifier ("early-stop" -> "early_stop"),
    so that ``frame.early_stop_rank`` and ``df.query`` work on the CSV."""
    return re.sub(r"\W+", "_", method).strip("_") or "method"


def ranking_table(frames: dict[str, pd.DataFrame], kinds: dict[str, StudyKind]) -> pd.DataFrame:
    """One row per configuration in any method's frame, best whole-dataset rank first (see the module docstring)."""
    known = [f[list(CONFIG_COLUMNS)] for f in frames.values() if not f.empty]
    info = pd.concat(known) if known else pd.DataFrame(columns=list(CONFIG_COLUMNS))
    ranking = info.drop_duplicates("config_id").set_index("config_id")
    for m, frame in frames.items():
        by_id, c = frame.set_index("config_id"), column_prefix(m)
        acc = by_id.val_acc
        ranking[f"{c}_{kinds[m].measure.column}"] = acc
        if kinds[m].trains:  # a network trained on this method's data has a test accuracy; a score has none
            ranking[f"{c}_test_acc"] = by_id.test_acc  # of the network trained on this method's data
        ranking[f"{c}_val_std"] = by_id.val_std
        # 1 = best; ties share the best rank; <NA> where the study lacks the configuration
        ranking[f"{c}_rank"] = acc.rank(ascending=False, method="min").astype("Int64")
    ranking = ranking.reset_index()
    return ranking.sort_values([f"{WHOLE}_rank", "config_id"], na_position="last", ignore_index=True)
