"""--precision auto|fp32|bf16: the flags (and the old --amp/--fp32), auto's measured choice and its
cache, and the precision a study and a proxy set record."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import optuna
import pytest
import torch

from proxynas.cli import build_parser
from proxynas.core.condense import CondenseConfig, condense, merge
from proxynas.core.train import TrainConfig
from proxynas.exceptions import ArtifactError, StudyError, UnknownNameError
from proxynas.nas.schema import SCHEMA, migrate, version_history
from proxynas.nas.search import prepare, run_search
from proxynas.runtime import precision
from proxynas.runtime.options import add_options, from_args
from proxynas.runtime.precision import CACHE_FILE, device_key, probe, resolve_for_all, resolve_precision
from tests.conftest import config, make_dataset

CPU = torch.device("cpu")
FAST_BF16 = {"fp32": 1.0, "bf16": 0.25}
SLOW_BF16 = {"fp32": 1.0, "bf16": 40.0}


def _parse(cls: type, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_options(parser, cls)
    return parser.parse_args(argv)


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """A fresh cache, and a probe that answers ``measured.times`` and counts its calls."""

    class Probe:
        times = FAST_BF16
        calls = 0

        def __call__(self, device):
            Probe.calls += 1
            return dict(Probe.times)

    monkeypatch.setenv("PROXYNAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "probe", Probe())
    return Probe


# --- flags -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [TrainConfig, CondenseConfig])
@pytest.mark.parametrize(
    ("argv", "want", "warning"),
    [
        (["--precision", "bf16"], "bf16", ""),
        (["--precision", "auto"], "auto", ""),
        (["--amp"], "bf16", "warning: --amp is deprecated; use --precision bf16\n"),
        (["--fp32"], "fp32", "warning: --fp32 is deprecated; use --precision fp32\n"),
    ],
)
def test_precision_flags_and_the_old_switches_with_one_deprecation_line(cls, argv, want, warning, capsys):
    args = _parse(cls, argv)
    assert from_args(cls, args).precision == want
    assert capsys.readouterr().err == warning


def test_defaults_fp32_for_training_and_condensing():
    assert from_args(TrainConfig, _parse(TrainConfig, [])).precision == "fp32"
    assert from_args(CondenseConfig, _parse(CondenseConfig, [])).precision == "fp32"


@pytest.mark.parametrize("command", ["condense", "search", "baseline", "evaluate", "score"])
def test_every_training_command_takes_precision_and_the_old_flag(command, capsys):
    sub = next(a for a in build_parser(command)._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {"--precision", "--amp", "--fp32"} <= flags
    assert "--amp" not in parser.format_help()  # the old spellings are hidden
    dest = next(a.dest for a in parser._actions if "--amp" in a.option_strings)
    ns = argparse.Namespace()
    next(a for a in parser._actions if "--amp" in a.option_strings)(parser, ns, [], "--amp")
    assert getattr(ns, dest) == "bf16"
    assert capsys.readouterr().err == "warning: --amp is deprecated; use --precision bf16\n"


def test_an_unknown_precision_is_refused_naming_the_choices():
    with pytest.raises(UnknownNameError, match="unknown precision 'fp16'; choose from: auto, fp32, bf16"):
        TrainConfig(precision="fp16")
    with pytest.raises(UnknownNameError, match="unknown precision"):
        CondenseConfig(precision="half")


def test_amp_follows_the_precision():
    assert TrainConfig(precision="bf16").amp and not TrainConfig(precision="fp32").amp


# --- auto: measured, cached ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("times", "want"),
    [
        (FAST_BF16, "bf16"),
        (SLOW_BF16, "fp32"),  # no bf16 units: torch's fallback loop
        ({"fp32": 1.0, "bf16": 0.95}, "fp32"),  # within the margin: not worth the rounding
        ({"fp32": 1.0, "bf16": math.inf}, "fp32"),  # bf16 cannot run here
    ],
)
def test_auto_chooses_by_the_probe(measured, times, want):
    measured.times = times
    assert resolve_precision("auto", CPU) == want
    assert measured.calls == 1


def test_fp32_and_bf16_are_taken_as_given_without_probing(measured):
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    assert measured.calls == 0


def test_the_choice_is_cached_per_device_and_a_second_run_does_not_probe(measured, tmp_path, monkeypatch):
    assert resolve_precision("auto", CPU) == "bf16"
    path = tmp_path / "cache" / CACHE_FILE
    entry = json.loads(path.read_text())[device_key(CPU)]
    assert entry["precision"] == "bf16" and entry["seconds"] == FAST_BF16
    measured.times = SLOW_BF16  # the cache answers, whatever a probe would say now
    assert resolve_precision("auto", CPU) == "bf16" and measured.calls == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 97)  # another thread count is another device
    assert resolve_precision("auto", CPU) == "fp32" and measured.calls == 2
    assert len(json.loads(path.read_text())) == 2


def test_a_damaged_cache_is_measured_again_and_rewritten(measured, tmp_path):
    path = tmp_path / "cache" / CACHE_FILE
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert resolve_precision("auto", CPU) == "bf16" and measured.calls == 1
    assert json.loads(path.read_text())[device_key(CPU)]["precision"] == "bf16"


def test_an_unwritable_cache_only_warns(measured, tmp_path, caplog):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    assert resolve_precision("auto", CPU) == "bf16"
    assert any("could not cache the measured precision" in r.getMessage() for r in caplog.records)


def test_a_run_over_several_devices_uses_bf16_only_where_every_one_is_faster(measured, tmp_path):
    path = tmp_path / "choices.json"
    a, b = torch.device("cuda", 0), torch.device("cuda", 1)
    answers = {str(a): "bf16", str(b): "fp32"}
    keys = {a: "gpu a", b: "gpu b"}
    path.write_text(json.dumps({keys[d]: {"precision": answers[str(d)]} for d in (a, b)}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(precision, "device_key", lambda d: keys[d])
        assert resolve_for_all("auto", [a, a], path=path) == "bf16"
        assert resolve_for_all("auto", [a, b], path=path) == "fp32"
        assert resolve_for_all("bf16", [a, b], path=path) == "bf16"
    assert measured.calls == 0


def test_the_probe_times_both_precisions_on_the_cpu():
    ticks = iter(range(1000))
    times = probe(CPU, rounds=2, clock=lambda: float(next(ticks)))  # each timed call spans one tick
    assert times == {"fp32": 1.0, "bf16": 1.0}


# --- what is recorded ----------------------------------------------------------------------------


def test_a_proxy_set_records_the_precision_auto_chose(measured, tmp_path):
    data = make_dataset()
    cfg = CondenseConfig(dataset="tiny", ipc=1, iterations=1, batch_real=4, val_fraction=0.0, precision="auto")
    syn = condense(cfg, tmp_path / "auto.safetensors", dataset=data, device="cpu")
    assert syn.meta["precision"] == "bf16" and syn.meta["config"]["precision"] == "auto"
    fp32 = condense(
        dataclasses.replace(cfg, precision="fp32"), tmp_path / "fp32.safetensors", dataset=data, device="cpu"
    )
    assert fp32.meta["precision"] == "fp32"


@pytest.mark.parametrize(("amp", "want"), [(True, "bf16"), (False, "fp32"), (None, "auto")])
def test_a_proxy_set_config_from_before_precision_reads_back(amp, want):
    old = {k: v for k, v in CondenseConfig().to_dict().items() if k != "precision"} | {"amp": amp}
    assert CondenseConfig.from_dict(old).precision == want


def test_a_study_records_the_precision_auto_chose(measured, proxy, space_file, tmp_path):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    cfg = config(proxy, space_file, storage)
    auto = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision="auto"))
    assert run_search(auto) == 4
    protocol = optuna.load_study(study_name="s", storage=storage).user_attrs["protocol"]
    assert protocol["precision"] == "bf16" and "amp" not in protocol
    with pytest.raises(
        StudyError, match="was trained with --precision bf16, not fp32: resume it with --precision bf16"
    ):
        prepare(cfg)
    (tmp_path / "cache" / CACHE_FILE).unlink()
    measured.times = SLOW_BF16  # measured now, auto would mean fp32: it resumes the study as it began
    assert run_search(auto) == 0 and measured.calls == 1
    assert optuna.load_study(study_name="s", storage=storage).user_attrs["protocol"]["precision"] == "bf16"


def _as_schema_1(storage: str, amp: bool) -> dict:
    """Rewrite study "s" as proxynas wrote it before --precision: schema 1, ``protocol.amp``."""
    study = optuna.load_study(study_name="s", storage=storage)
    attrs = {k: v for k, v in study.user_attrs.items() if not k.startswith("version_history:")}
    protocol = {k: v for k, v in attrs["protocol"].items() if k != "precision"} | {"amp": amp}
    with optuna.storages.RDBStorage(storage).engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM study_user_attributes")
    old = attrs | {"schema": 1, "protocol": protocol}
    for k, v in old.items():
        study.set_user_attr(k, v)
    return old


def test_a_study_written_with_amp_false_resumes_in_fp32(proxy, space_file, tmp_path):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    cfg = config(proxy, space_file, storage)
    run_search(cfg)
    old = _as_schema_1(storage, amp=False)
    bf16 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision="bf16"))
    with pytest.raises(
        StudyError, match="was trained with --precision fp32, not bf16: resume it with --precision fp32"
    ):
        prepare(bf16)
    assert run_search(cfg) == 0  # fp32, the default: resumed (every configuration was complete already)
    attrs = optuna.load_study(study_name="s", storage=storage).user_attrs
    assert attrs["schema"] == SCHEMA and attrs["protocol"]["precision"] == "fp32" and "amp" not in attrs["protocol"]
    (entry,) = version_history(attrs)
    assert entry["migrated"]["from_schema"] == 1
    assert entry["migrated"]["replaced"] == {"protocol": old["protocol"]}


def test_a_study_written_with_amp_true_migrates_to_bf16():
    assert migrate({"schema": 1, "protocol": {"amp": True, "epochs": 3}})["protocol"] == {
        "precision": "bf16",
        "epochs": 3,
    }


def test_shards_whose_auto_chose_differently_are_not_merged(measured, tmp_path):
    data = make_dataset()
    cfg = CondenseConfig(dataset="tiny", ipc=1, iterations=1, batch_real=4, val_fraction=0.0, precision="auto")
    first = tmp_path / "a.safetensors"
    condense(dataclasses.replace(cfg, classes=(0,)), first, dataset=data, device="cpu")
    (tmp_path / "cache" / CACHE_FILE).unlink()
    measured.times = SLOW_BF16  # the second shard's device measures otherwise
    second = tmp_path / "b.safetensors"
    condense(dataclasses.replace(cfg, classes=(1, 2)), second, dataset=data, device="cpu")
    with pytest.raises(ArtifactError, match=r"different precisions \(bf16, fp32\); condense the shards again"):
        merge([first, second], tmp_path / "merged.safetensors")
