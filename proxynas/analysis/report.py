"""How far a proxy ranking can be trusted: ``build_report`` compares studies with whole-dataset training.

References:
- Zhao & Bilen, "Dataset Condensation with Distribution Matching" (WACV 2023), Table 5
  and Figure F8; docs/protocol.md §5 is the spec this module follows.
- Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching" (ICLR 2021):
  the NAS protocol and the 720-ConvNet space Table 5 reuses.

Each method's study (proxies, early stopping, any extra) is read into a frame
(``nas.results``), set beside the others in the ranking table (``rankings``) and
compared with the whole-dataset study in a summary row (``statistics``, which defines
each figure); ``train_steps`` and ``repeats`` say what one candidate costs, as each
study recorded it. ``write_report`` writes the tables, the figures (``plots``) and
what was compared.

Whole-dataset training need only cover the union of the methods' top sets (§5's note),
so the configurations it lacks are listed with a command that trains them; a study
that has not finished its space is listed with a command that completes it. Studies
ranked on different validation splits are refused, and so is early stopping that
trains another number of steps per run than the proxies (§5: the same cost); both
errors give the command that fixes them. Undefined statistics and other caveats are
``Report.notes``: nothing is dropped silently.
"""

from __future__ import annotations

import collections
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.storages import RDBStorage

from proxynas.analysis.plots import plot_correlations, plot_top
from proxynas.analysis.rankings import WHOLE, method_names, ranking_table
from proxynas.analysis.statistics import (
    DEFAULT_K,
    DEFAULT_TOP,
    SUMMARY_COLUMNS,
    compare,
    space_size,
    top_advice,
    whole_reference,
)
from proxynas.exceptions import StudyError, UsageError
from proxynas.nas.kinds import EARLY_STOP, Measure, kind_of
from proxynas.nas.results import (
    open_existing,
    planned_size,
    study_frame,
    top_configs,
    top_count,
    top_label,
    trials_frame,
)
from proxynas.nas.study import WorkerGrpcStorage, open_study
from proxynas.runtime.failures import shown_url
from proxynas.runtime.outputs import staged_folder, write_json
from proxynas.runtime.provenance import versions

__all__ = ["Report", "build_report", "study_frame", "write_report"]  # study_frame lives in nas.results

_NAN = float("nan")


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
    measures: dict[str, Measure]  # method -> what its values are (its study kind's measure)
    settings: dict[str, Any] = field(default_factory=dict)  # what build_report was asked: studies, top, k, storage


def build_report(
    storage: str | RDBStorage | WorkerGrpcStorage,
    proxy_studies: Sequence[str],
    whole: str,
    early_stop: str | None = None,
    extra: Sequence[str] = (),
    top: float | int = DEFAULT_TOP,
    k: int = DEFAULT_K,
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
    rdb = open_existing(storage)
    studies = {n: open_study(rdb, n, create=False) for n in [*names, whole]}
    _check_one_dataset(studies)
    _check_one_split(studies, whole)
    methods = method_names({n: studies[n] for n in names}) | {WHOLE: whole}
    frames = {m: trials_frame(studies[s]) for m, s in methods.items()}
    kinds = {m: kind_of(studies[s].user_attrs.get("kind")) for m, s in methods.items()}
    measures = {m: kinds[m].measure for m in methods}
    budgets = {n: _budget(studies[n]) for n in [*names, whole]}

    notes: list[str] = []
    if early_stop:
        _check_equal_cost(studies, budgets, proxy_studies, early_stop, rdb, notes)
    if (kind := studies[whole].user_attrs.get("kind", WHOLE)) != WHOLE:
        notes.append(f"the whole-dataset study {whole!r} has kind {kind!r}, not {WHOLE!r}")
    # before the methods' own notes: on a slice, it explains the undefined Spearman over the top set of them all
    notes += top_advice(
        top, {m: space_size(frames[m], planned_size(studies[s])) for m, s in methods.items() if m != WHOLE}
    )
    rows, missing, finish = [], {}, {}
    tops = {WHOLE: top_configs(frames[WHOLE], top, of=planned_size(studies[whole]))}
    for m, frame in frames.items():
        if m == WHOLE:
            continue  # whole against whole says nothing; it covers the top sets only, by design (fill_commands)
        study = studies[methods[m]]
        row, tops[m] = compare(m, frame, frames[WHOLE], top, k, notes, planned_size(study), kinds[m].test_side)
        rows.append(row | budgets[methods[m]])
        # the selected configuration heads the top set, so a missing selection is listed here too
        if lacking := [c for c in tops[m] if c not in set(frames[WHOLE].config_id)]:
            missing[m] = lacking
        if row["n_unfinished"]:
            command = study.user_attrs.get("command")
            notes.append(
                f"{m}: {row['n_unfinished']} of the {planned_size(study)} configurations of its space have "
                f"no complete trial; its {top_label(top)} is counted against all of them, from what "
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
        "storage": shown_url(rdb.url),
        "whole_training": whole_reference(frames[WHOLE], tops[WHOLE], budgets[whole]),
        "dataset": next((s.user_attrs["dataset"] for s in studies.values() if "dataset" in s.user_attrs), None),
    }
    return Report(
        ranking_table(frames, kinds),
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


def _check_one_split(studies: dict[str, optuna.Study], whole: str) -> None:
    """Refuse studies ranked on different validation splits: their accuracies are not of the same images."""
    splits = {n: s.user_attrs["split"] for n, s in studies.items() if "split" in s.user_attrs}
    if not splits:
        return
    ref = whole if whole in splits else next(iter(splits))
    for n, split in splits.items():
        if split["fingerprint"] != splits[ref]["fingerprint"]:
            want = splits[ref]
            fix = kind_of(studies[n].user_attrs.get("kind")).split_fix
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
    storage: RDBStorage | WorkerGrpcStorage,
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
            _baseline_command(studies[early_stop], storage, EARLY_STOP),
            {"--steps": want, "--study": f"{early_stop}-{want}steps"},
        )
        raise StudyError(
            f"early stopping ({early_stop!r}) trains {steps[early_stop]:g} steps per run but proxy "
            f"study {name!r} trains {want}, so they do not cost the same; train early stopping on "
            f"the proxies' budget: {fixed}"
        )


def _baseline_command(study: optuna.Study, storage: RDBStorage | WorkerGrpcStorage, kind: str) -> str:
    """The command a baseline study was filled with (recorded without --configs), else the generic one."""
    base = study.user_attrs.get("command")
    if base is None:  # a study filled some other way (its password hidden, not printed)
        url = shown_url(storage.url)
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


def write_report(report: Report, out_dir: str | Path, command: str | None = None) -> dict[str, Path]:
    """Write ranking.csv, summary.csv, scatter_top.png, correlations.png and config.json (replacing old ones).

    They are written into a folder beside ``out_dir`` and renamed into place at the end
    (``outputs.staged_folder``): a full disk or a kill leaves the previous report whole, never a
    0-byte plot or half a folder.

    config.json records what was compared and how (``Report.settings``), the command line
    (``command``), the studies behind each method, the notes and the software versions.

    The CSVs keep floats at full precision (shortest round-trip repr), so ``pd.read_csv``
    gives the frames back exactly (pandas 2.x: pass ``float_precision="round_trip"``).
    The plots use matplotlib's object API, not pyplot: no backend is switched and no
    global state is touched.
    """
    out = Path(out_dir)
    names = {
        "ranking": "ranking.csv",
        "summary": "summary.csv",
        "scatter_top": "scatter_top.png",
        "correlations": "correlations.png",
        "config": "config.json",
    }
    with staged_folder(out) as stage:  # all of them or none: a full disk leaves the previous report as it was
        paths = {key: stage / name for key, name in names.items()}
        report.ranking.to_csv(paths["ranking"], index=False)
        report.summary.to_csv(paths["summary"], index=False)
        plot_top(
            report.ranking,
            report.summary,
            report.top,
            report.measures,
            report.settings.get("top", DEFAULT_TOP),
            report.settings.get("dataset"),
        ).savefig(paths["scatter_top"], dpi=120)
        plot_correlations(report.summary).savefig(paths["correlations"], dpi=120)
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
    return {key: out / name for key, name in names.items()}
