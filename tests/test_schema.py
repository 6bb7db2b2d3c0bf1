"""Study schemas: migrations of recorded attributes, what a resume compares, and the version history."""

from __future__ import annotations

import copy
import dataclasses
import shlex
import shutil
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from proxynas.exceptions import StudyError
from proxynas.nas import search
from proxynas.nas.schema import MIGRATIONS, SCHEMA, clashes, migrate, refusal, version_history
from proxynas.nas.search import prepare, run_search
from proxynas.version import __version__
from tests.conftest import TINY_SPACE, assert_one_line_error, config, run_cli

# What proxynas wrote at 272cd54 (tests/fixtures/study-272cd54, study "partial"): schema 0.
AT_272CD54 = {
    "command": "proxynas search --proxy proxy.safetensors --study partial --epochs 100 --repeats 2 --quiet",
    "dataset": "digits",
    "ipc": 2,
    "kind": "proxy",
    "method": "dm",
    "protocol": {
        "epochs": 100,
        "steps": 100,
        "batch_size": 250,
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "dsa_strategy": "color_crop_cutout_scale_rotate",
        "dsa_family": "batch",
        "amp": False,
        "compile": False,
        "repeat_mode": "auto",
        "objective": "validation accuracy",
        "repeats": 2,
    },
    "proxy_path": "/home/user/study-272cd54/proxy.safetensors",
    "proxy_sha256": "9a7158331535176a612b6a6d4893aa2ef921c0920780acffc10170e2f1e82a33",
    "sampler": "exhaustive",
    "seed": 0,
    "space": {
        "name": "convnet720[depth=1,2,3,4;width=32;act=relu;norm=batchnorm,instancenorm;pool=avg]",
        "description": "ConvNet NAS space of the DM paper (Table 5)",
        "source": "bundled:convnet720",
        "size": 8,
        "axes": {
            "depth": [1, 2, 3, 4],
            "width": [32],
            "act": ["relu"],
            "norm": ["batchnorm", "instancenorm"],
            "pool": ["avg"],
        },
    },
    "split": {"val_fraction": 0.1, "seed": 0, "fingerprint": "b821c341c6842eed1c2045990e2749b741ffee08"},
    "versions": {"proxynas": "0.1.0", "torch": "2.14.1+cu130", "optuna": "5.1.0"},
}

# The protocol proxynas recorded before repeats arrived (b6b839b^): TrainConfig as it was, plus the objective.
BEFORE_REPEATS = {"epochs": 100, "steps": None, "batch_size": 250, "lr": 0.01, "momentum": 0.9}
BEFORE_REPEATS |= {"weight_decay": 0.0005, "dsa_strategy": None, "amp": False, "objective": "validation accuracy"}


def before_repeats(**attrs) -> dict:
    old = copy.deepcopy(AT_272CD54)
    old["protocol"] = dict(BEFORE_REPEATS)
    return {**old, **attrs}


def now(**protocol) -> dict:
    """What this proxynas asks for on the 272cd54 study's command, with ``protocol`` changed."""
    asked = migrate(AT_272CD54)
    asked["data_fingerprint"] = "5f1e0c2a9b7d4c3e"
    asked["protocol"].update(protocol)
    return asked


# --- migrations, on hand-built attributes ------------------------------------------------------


def test_every_schema_below_the_current_one_has_a_migration():
    assert sorted(MIGRATIONS) == list(range(SCHEMA))


def test_a_272cd54_study_migrates_to_the_current_schema_with_nothing_but_an_unknown_data_fingerprint():
    before = copy.deepcopy(AT_272CD54)
    migrated = migrate(AT_272CD54)
    assert AT_272CD54 == before  # in memory: the recorded attributes are left as they are
    protocol = {k: v for k, v in AT_272CD54["protocol"].items() if k != "amp"} | {"precision": "fp32"}  # amp false
    assert migrated == {**AT_272CD54, "schema": SCHEMA, "data_fingerprint": None, "protocol": protocol}


@pytest.mark.parametrize("amp, precision", [(True, "bf16"), (False, "fp32")])
def test_a_schema_1_protocol_s_amp_becomes_its_precision(amp, precision):
    recorded = {**AT_272CD54, "schema": 1, "protocol": {**AT_272CD54["protocol"], "amp": amp}}
    migrated = migrate(recorded)
    assert "amp" not in migrated["protocol"] and migrated["protocol"]["precision"] == precision
    assert {k: v for k, v in migrated["protocol"].items() if k != "precision"} == {
        k: v for k, v in AT_272CD54["protocol"].items() if k != "amp"
    }
    assert recorded["protocol"]["amp"] is amp  # the recorded attributes are left as they are


def test_a_study_from_before_repeats_gets_the_settings_that_reproduce_what_its_version_did():
    protocol = migrate(before_repeats())["protocol"]
    # one training per candidate, a DSA family drawn per image, the dataset's DSA strategy of then
    assert protocol == {
        **{k: v for k, v in BEFORE_REPEATS.items() if k != "amp"},
        "precision": "fp32",
        "repeats": 1,
        "dsa_family": "image",
        "dsa_strategy": "color_crop_cutout_scale_rotate",  # digits: no flips
        "compile": False,
        "repeat_mode": "sequential",
    }
    assert migrate(before_repeats(dataset="cifar10"))["protocol"]["dsa_strategy"] == (
        "color_crop_cutout_flip_scale_rotate"
    )
    given = before_repeats()
    given["protocol"]["dsa_strategy"] = "crop"
    assert migrate(given)["protocol"]["dsa_strategy"] == "crop"


def test_a_step_budget_from_before_repeats_loses_the_epochs_it_never_used():
    early = before_repeats(kind="early-stop", method="early-stop")
    early["protocol"] |= {"epochs": 1000, "steps": 400}
    protocol = migrate(early)["protocol"]
    assert protocol["epochs"] is None and protocol["steps"] == 400 and protocol["repeats"] == 1


def test_a_zero_cost_study_from_before_repeats_records_no_repeats():
    score = before_repeats(kind="zero-cost", method="naswot", minibatch=64)
    score["protocol"] |= {"epochs": 0}
    protocol = migrate(score)["protocol"]
    assert "repeats" not in protocol and protocol["dsa_strategy"] is None


def test_a_study_from_a_newer_proxynas_is_refused():
    with pytest.raises(StudyError, match=f"newer proxynas \\(study schema {SCHEMA + 1};.*upgrade proxynas"):
        migrate({**AT_272CD54, "schema": SCHEMA + 1})
    with pytest.raises(StudyError, match="not a schema number"):
        migrate({**AT_272CD54, "schema": "one"})


# --- what a resume compares --------------------------------------------------------------------


def test_settings_that_do_not_change_a_trials_value_are_not_compared():
    asked = now(compile=True, repeat_mode="stacked", knob_of_a_later_version="default")
    asked["space"] |= {"name": "convnet720[another label]", "description": "reworded", "size": 9}
    asked["space"]["axes"]["norm"] = ["instancenorm", "batchnorm"]  # the same values in another order
    asked |= {"sampler": "tpe", "command": "proxynas search ...", "versions": {"proxynas": "9"}}
    del asked["ipc"]  # a key the new version no longer records
    assert clashes(migrate(AT_272CD54), asked) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 50}, "was trained with --epochs 100, not 50: resume it with --epochs 100, or"),
        ({"lr": 0.1}, "was trained with --lr 0.01, not 0.1: resume it with --lr 0.01, or"),
        ({"repeats": 5}, "was trained with --repeats 2, not 5: resume it with --repeats 2, or"),
        ({"batch_size": 128}, "was trained with --batch-size 250, not 128: resume it with --batch-size 250, or"),
        ({"precision": "bf16"}, "was trained with --precision fp32, not bf16: resume it with --precision fp32, or"),
        ({"dsa_strategy": "none"}, "with --dsa-strategy color_crop_cutout_scale_rotate, not none: resume it with"),
        (
            {"epochs": None, "steps": 400},
            "was trained with --epochs 100, not --steps 400: resume it with --epochs 100,",
        ),
        ({"momentum": 0.5}, "was trained with momentum 0.9, not 0.5: resume it with momentum 0.9, or"),
    ],
)
def test_a_changed_setting_is_refused_naming_the_flag_and_both_values(change, message):
    found = clashes(migrate(AT_272CD54), now(**change))
    assert len(found) == 1
    assert message in refusal("partial", found)


def test_a_changed_space_is_refused_with_the_restriction_that_resumes_it():
    asked = now()
    asked["space"]["axes"]["depth"] = [1, 2]
    line = refusal("partial", clashes(migrate(AT_272CD54), asked))
    assert line == (
        "study 'partial' was trained with --restrict 'depth=1,2,3,4;width=32;act=relu;norm=batchnorm,instancenorm;"
        "pool=avg', not 'depth=1,2;width=32;act=relu;norm=batchnorm,instancenorm;pool=avg': resume it with "
        "--restrict 'depth=1,2,3,4;width=32;act=relu;norm=batchnorm,instancenorm;pool=avg', or use a new --study name"
    )


def test_several_changes_are_named_in_one_line_and_resumed_by_one_set_of_flags():
    asked = now(epochs=50, lr=0.1)
    asked["seed"] = 3
    line = refusal("x", clashes(migrate(AT_272CD54), asked))
    assert line == (
        "study 'x' was trained with --epochs 100, not 50; and --lr 0.01, not 0.1; and --seed 0, not 3: "
        "resume it with --epochs 100 --lr 0.01 --seed 0, or use a new --study name"
    )


def test_another_proxy_set_or_data_is_refused_naming_the_recorded_file():
    asked = now()
    asked["proxy_sha256"] = "1b2c3d4e5f6a" + "0" * 52
    del asked["proxy_path"]  # a study records it, a search does not ask it: the file may have moved
    assert refusal("partial", clashes(migrate(AT_272CD54), asked)) == (
        "study 'partial' was trained with --proxy /home/user/study-272cd54/proxy.safetensors (sha256 9a7158331535), "
        "not a proxy set with sha256 1b2c3d4e5f6a: resume it with --proxy /home/user/study-272cd54/proxy.safetensors "
        "(sha256 9a7158331535), or use a new --study name"
    )
    recorded = {**migrate(AT_272CD54), "data_fingerprint": "aaaaaaaaaaaaaaaa"}
    line = refusal("partial", clashes(recorded, now()))
    assert (
        "was trained with --data-path <the data with fingerprint aaaaaaaaaaaa>, not <the data with fingerprint "
        "5f1e0c2a9b7d>: resume it with --data-path <the data with fingerprint aaaaaaaaaaaa>, or" in line
    )
    assert clashes(migrate(AT_272CD54), now()) == []  # a schema-0 study never recorded its data: not compared


def test_a_study_from_before_repeats_resumes_only_with_the_flags_of_its_protocol():
    old = migrate(before_repeats())
    line = refusal("old", clashes(old, now(repeats=5)))
    assert line == (
        "study 'old' was trained with --dsa-family image, not batch; and --repeats 1, not 5: "
        "resume it with --dsa-family image --repeats 1, or use a new --study name"
    )
    assert clashes(old, now(repeats=1, dsa_family="image", repeat_mode="auto")) == []


# --- on a real study ---------------------------------------------------------------------------


def test_resuming_with_a_changed_setting_is_refused_in_one_line_with_exit_code_7(proxy, space_file, tmp_path):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    cfg = config(proxy, space_file, storage, epochs=2)
    prepare(cfg)
    for changed, flag in (
        (dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=3)), "--epochs 2, not 3"),
        (dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=0.1)), "--lr 0.01, not 0.1"),
        (dataclasses.replace(cfg, restrict="width=8"), "--restrict 'depth=1;width=8,16;act=relu;norm=none,"),
    ):
        with pytest.raises(StudyError, match="was trained with") as e:
            prepare(changed)
        assert flag in str(e.value) and "\n" not in str(e.value) and e.value.exit_code == 7
    prepare(cfg)  # the same settings still resume


def test_a_resume_whose_version_adds_a_default_is_not_refused(proxy, space_file, tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    prepare(config(proxy, space_file, storage))
    recorded = optuna.load_study(study_name="s", storage=storage).user_attrs
    study_attrs = search.study_attrs

    def later_version(*args):  # one that records a new setting, whose default keeps what trials did
        attrs = study_attrs(*args)
        attrs["protocol"]["knob"] = "default"
        attrs["space"]["description"] = "a later description"
        return attrs

    monkeypatch.setattr(search, "study_attrs", later_version)
    prepare(config(proxy, space_file, storage))
    after = optuna.load_study(study_name="s", storage=storage).user_attrs
    assert after["protocol"] == recorded["protocol"] and after["space"] == recorded["space"]  # first record kept


def test_a_study_written_before_repeats_resumes_after_its_migration(proxy, space_file, tmp_path):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    cfg = config(proxy, space_file, storage)
    run_search(cfg)
    study = optuna.load_study(study_name="s", storage=storage)
    old = {k: v for k, v in study.user_attrs.items() if not k.startswith("version_history:")}
    # as that version wrote it: no schema, no data fingerprint, no repeats, dsa_family, repeat_mode, compile;
    # TrainConfig's steps (None: an epoch budget) and dsa_strategy (None: the dataset's) as given
    old_protocol = {k: old["protocol"][k] for k in BEFORE_REPEATS if k != "amp"}
    old_protocol |= {"amp": False, "dsa_strategy": None, "steps": None}
    with optuna.storages.RDBStorage(storage).engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM study_user_attributes")
    old = {k: v for k, v in old.items() if k not in ("schema", "data_fingerprint")} | {"protocol": old_protocol}
    for k, v in old.items():
        study.set_user_attr(k, v)

    with pytest.raises(StudyError, match="trained with --dsa-family image, not batch: resume it with --dsa-family"):
        prepare(cfg)
    image = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, dsa_family="image"))
    assert run_search(image) == 0  # resumed: every configuration was complete already
    attrs = optuna.load_study(study_name="s", storage=storage).user_attrs
    assert attrs["schema"] == SCHEMA and attrs["protocol"]["repeats"] == 1
    assert attrs["protocol"]["dsa_family"] == "image" and attrs["protocol"]["repeat_mode"] == "sequential"
    (entry,) = version_history(attrs)
    assert entry["migrated"] == {"from_schema": 0, "replaced": {"protocol": old_protocol}}
    prepare(image)  # and again, now in the current schema


def test_descriptions_and_names_changing_do_not_block_a_resume(proxy, space_file, tmp_path):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    prepare(config(proxy, space_file, storage))
    renamed = tmp_path / "renamed.toml"
    renamed.write_text(TINY_SPACE.replace('name = "tiny"', 'name = "other"\ndescription = "reworded"'))
    prepare(config(proxy, renamed, storage, sampler="random"))
    space = optuna.load_study(study_name="s", storage=storage).user_attrs["space"]
    assert space["name"] == "tiny" and space["description"] == ""


def test_each_run_appends_its_versions_and_trial_range_and_the_first_versions_record_stays(proxy, space_file, tmp_path):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    cfg = config(proxy, space_file, storage)
    first_two = ("d1-w8-relu-none-avg", "d1-w8-relu-instancenorm-avg")
    assert run_search(dataclasses.replace(cfg, configs=first_two)) == 2
    study = optuna.load_study(study_name="s", storage=storage)
    study.set_user_attr("versions", {"proxynas": "0.0.9", "torch": "2.0"})  # as an earlier version wrote it
    assert run_search(cfg) == 2
    attrs = optuna.load_study(study_name="s", storage=storage).user_attrs
    assert attrs["versions"] == {"proxynas": "0.0.9", "torch": "2.0"}
    assert attrs["schema"] == SCHEMA
    one, two = version_history(attrs)
    for entry in (one, two):
        assert entry["proxynas"] == __version__ and entry["torch"] == torch.__version__
        assert entry["optuna"] == optuna.__version__ and entry["schema"] == SCHEMA
        assert entry["started"] <= entry["ended"] and "migrated" not in entry
    assert one["started"] < two["started"]
    assert (one["first_trial"], one["last_trial"], one["created"], one["completed"]) == (0, 1, 2, 2)
    assert (two["first_trial"], two["last_trial"], two["created"], two["completed"]) == (2, 3, 2, 2)
    trials = optuna.load_study(study_name="s", storage=storage).get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]


def test_a_run_that_writes_nothing_is_recorded_with_an_empty_range(proxy, space_file, tmp_path):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    cfg = config(proxy, space_file, storage)
    run_search(cfg)
    assert run_search(cfg) == 0
    _, again = version_history(optuna.load_study(study_name="s", storage=storage).user_attrs)
    assert (again["first_trial"], again["last_trial"], again["created"], again["completed"]) == (None, None, 0, 0)


def test_the_fixture_study_resumed_with_other_epochs_is_refused_in_one_line_naming_the_flag(
    tmp_path, monkeypatch, capsys
):
    fixture = Path(__file__).parent / "fixtures" / "study-272cd54"
    copy = tmp_path / fixture.name
    shutil.copytree(fixture, copy)
    for path in copy.iterdir():
        path.chmod(0o644)
    monkeypatch.chdir(copy)
    storage = "sqlite:///studies.db"
    before = optuna.load_study(study_name="partial", storage=storage).user_attrs
    argv = shlex.split(before["command"])[1:]
    argv[argv.index("--epochs") + 1] = "50"
    code, _, err = run_cli(capsys, *argv)
    assert code == StudyError.exit_code == 7
    assert_one_line_error(
        err,
        "study 'partial' was trained with --epochs 100, not 50: resume it with --epochs 100, or use a new --study name",
    )
    assert optuna.load_study(study_name="partial", storage=storage).user_attrs == before  # nothing recorded


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "--proxy", "p", "--study", "s"],
        ["baseline", "--kind", "whole", "--dataset", "digits", "--study", "w"],
    ],
)
def test_the_dsa_family_flag_that_resumes_studies_from_before_repeats_reaches_the_training_config(argv):
    from proxynas.cli import COMMANDS, build_parser

    for flags, family in (([], "batch"), (["--dsa-family", "image"], "image")):
        args = build_parser().parse_args([*argv, *flags])
        args.argv = [*argv, *flags]
        assert COMMANDS[argv[0]].config(args).train.dsa_family == family
