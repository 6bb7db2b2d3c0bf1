"""The proxynas command: end to end on the embedded digits, and bad input refused in one line."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from proxynas.cli import COMMANDS, build_parser, main
from proxynas.core.condense import SyntheticSet, checkpoint_path
from proxynas.exceptions import StudyError, UsageError
from proxynas.version import __version__
from tests.conftest import TINY_MODEL, assert_one_line_error, ctrl_c_default, run_cli


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "usage: proxynas " + name in capsys.readouterr().out


def test_condense_then_evaluate_on_digits(capsys, tmp_path):
    out = tmp_path / "dm.safetensors"
    code, stdout, _ = run_cli(
        capsys,
        "condense",
        "--dataset",
        "digits",
        "--ipc",
        "2",
        "--model",
        TINY_MODEL,
        "--iterations",
        "3",
        "--real-batch-size",
        "8",
        "--out",
        out,
        "--quiet",
        "--device",
        "cpu",
    )
    assert code == 0 and "wrote" in stdout
    syn = SyntheticSet.load(out)
    assert syn.images.shape == (20, 1, 32, 32) and syn.meta["dataset"]["name"] == "digits"
    assert out.with_suffix(".png").exists()

    code, stdout, _ = run_cli(capsys, "evaluate", out, "--epochs", "2", "--num-nets", "2", "--quiet", "--device", "cpu")
    result = json.loads((tmp_path / f"dm.eval-{TINY_MODEL}.json").read_text())
    assert len(result["accuracies"]) == 2 and 0.0 <= result["mean"] <= 1.0
    assert result["train"]["epochs"] == 2 and result["train"]["dsa_strategy"] == "color_crop_cutout_scale_rotate"
    said = f"test accuracy {100 * result['mean']:.2f} ± {100 * result['std']:.2f} % over 2 networks ->"
    assert code == 0 and said in " ".join(stdout.split())

    one = tmp_path / "one.safetensors"  # the same set: its evaluation file is another
    one.write_bytes(out.read_bytes())
    code, stdout, _ = run_cli(capsys, "evaluate", one, "--epochs", "2", "--num-nets", "1", "--quiet", "--device", "cpu")
    (acc,) = json.loads((tmp_path / f"one.eval-{TINY_MODEL}.json").read_text())["accuracies"]
    assert code == 0 and f"test accuracy {100 * acc:.2f} % over 1 network ->" in " ".join(stdout.split())


def test_sharded_condense_and_merge(capsys, tmp_path):
    common = [
        "condense",
        "--dataset",
        "digits",
        "--ipc",
        "1",
        "--model",
        TINY_MODEL,
        "--iterations",
        "2",
        "--real-batch-size",
        "4",
        "--quiet",
        "--device",
        "cpu",
    ]
    for i in (1, 2):
        assert run_cli(capsys, *common, "--classes", f"{i}/2", "--out", tmp_path / f"p{i}.safetensors")[0] == 0
    code, stdout, _ = run_cli(
        capsys,
        "condense",
        "merge",
        tmp_path / "p1.safetensors",
        tmp_path / "p2.safetensors",
        "--out",
        tmp_path / "all.safetensors",
    )
    assert code == 0 and "10 images" in stdout
    assert SyntheticSet.load(tmp_path / "all.safetensors").labels.tolist() == list(range(10))
    code, stdout, _ = run_cli(capsys, *common, "--workers", "2", "--out", tmp_path / "parallel.safetensors")
    assert code == 0 and "10 images" in stdout
    torch.testing.assert_close(
        SyntheticSet.load(tmp_path / "parallel.safetensors").images,
        SyntheticSet.load(tmp_path / "all.safetensors").images,
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "argv,code,fragments",
    [
        (["--ipc", "0"], 2, ["--ipc must be at least 1"]),
        (["--ipc", "400"], 2, ["larger than the smallest class", "--ipc 125 or less"]),  # 139 less the 10% hold-out
        (["--model", "NoSuchNet", "--iterations", "1"], 2, ["unknown network 'NoSuchNet'", "ConvNetBN"]),
        (["--classes", "9/3"], 2, ["--classes '9/3' is not valid"]),
        (["--workers", "0"], 2, ["--workers must be at least 1"]),
        (["--workers", "2", "--method", "dsa"], 2, ["--method dsa cannot be split into class shards"]),
        (["--devices", "cpu", "--device", "cpu"], 2, ["not both"]),
    ],
)
def test_condense_bad_input(capsys, tmp_path, argv, code, fragments):
    got, _, err = run_cli(
        capsys, "condense", "--dataset", "digits", "--out", tmp_path / "x.safetensors", "--quiet", *argv
    )
    assert got == code
    assert_one_line_error(err, *fragments)
    assert not (tmp_path / "x.safetensors").exists()


def test_existing_output_is_never_overwritten(capsys, tmp_path):
    out = tmp_path / "p.safetensors"
    argv = ["condense", "--dataset", "digits", "--method", "random", "--ipc", "1", "--out", out, "--quiet"]
    assert run_cli(capsys, *argv)[0] == 0
    before = out.read_bytes()
    code, _, err = run_cli(capsys, *argv, "--seed", "5")
    assert code == 5
    assert_one_line_error(err, "already exists", "--resume")
    assert out.read_bytes() == before


def test_unknown_dataset_and_missing_data(capsys, tmp_path):
    code, _, err = run_cli(capsys, "condense", "--dataset", "nosuch")
    assert code == 2
    assert_one_line_error(err, "unknown dataset 'nosuch'", "cifar10", "digits")
    code, _, err = run_cli(capsys, "condense", "--dataset", "cifar10", "--data-path", tmp_path / "missing.tar.gz")
    assert code == 3
    assert_one_line_error(err, f"--data-path {tmp_path / 'missing.tar.gz'} does not exist", "--download")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    code, _, err = run_cli(capsys, "condense", "--dataset", "folder", "--data-path", tmp_path / "empty")
    assert code == 3
    assert_one_line_error(err, "no")


def test_tarball_that_is_not_an_imagefolder_tree(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    tar = tmp_path / "bad.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(tmp_path / "notes.txt", arcname="notes.txt")
    code, _, err = run_cli(capsys, "condense", "--dataset", "folder", "--data-path", tar)
    assert code == 3
    assert_one_line_error(err, "train")


def test_evaluate_refuses_foreign_and_unreadable_files(capsys, tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "weights.safetensors"))
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "weights.safetensors")
    assert code == 4
    assert_one_line_error(err, "not a proxynas proxy set")
    (tmp_path / "broken.safetensors").write_bytes(b"{not safetensors")
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "broken.safetensors")
    assert code == 4
    assert_one_line_error(err, "unreadable")


def test_kill_9_then_resume_completes_with_the_uninterrupted_result(tmp_path):
    """A real process killed with SIGKILL mid-run, then --resume, ends where a straight run ends."""
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    argv = [
        sys.executable,
        "-m",
        "proxynas",
        "condense",
        "--dataset",
        "digits",
        "--ipc",
        "2",
        "--model",
        TINY_MODEL,
        "--iterations",
        "150",
        "--real-batch-size",
        "8",
        "--checkpoint-every",
        "10",
        "--tune",  # both runs take the memory rule: a timed race could pick plans apart in the last float bits
        "no",
        "--quiet",
        "--device",
        "cpu",
    ]
    straight = tmp_path / "straight.safetensors"
    subprocess.run(argv + ["--out", str(straight)], env=env, check=True, capture_output=True)

    out = tmp_path / "killed.safetensors"
    proc = subprocess.Popen(argv + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not checkpoint_path(out).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()

    refused = subprocess.run(argv + ["--out", str(out)], env=env, capture_output=True, text=True)
    assert refused.returncode == 5 and "--resume" in refused.stderr and "Traceback" not in refused.stderr
    subprocess.run(argv + ["--out", str(out), "--resume"], env=env, check=True, capture_output=True)
    a, b = SyntheticSet.load(straight), SyntheticSet.load(out)
    assert torch.allclose(a.images, b.images, atol=1e-5)
    assert not checkpoint_path(out).exists()


def test_quickstart_runs_end_to_end_and_resumes_after_an_interruption(capsys, monkeypatch, tmp_path):
    import optuna

    from proxynas.cli import quickstart
    from proxynas.cli.quickstart import QuickstartPlan, run_quickstart

    plan = QuickstartPlan(
        out=tmp_path / "qs",
        ipc=2,
        dm_iterations=4,
        batch_real=8,
        proxy_epochs=2,
        whole_epochs=1,
        restrict="depth=1;width=32;act=relu;norm=none,instancenorm;pool=avg",
        device="cpu",
    )

    def stop_before_whole(stage: str) -> None:
        if stage == "baseline whole":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_quickstart(plan, on_stage=stop_before_whole)
    dm_trials = len(optuna.load_study(study_name="dm", storage=plan.storage).trials)
    # continued by the command, on the small plan above (the command's own is minutes long)
    reports = []

    def small(_: QuickstartPlan, **kwargs):
        reports.append(run_quickstart(plan, **kwargs))
        return reports[-1]

    monkeypatch.setattr(quickstart, "run_quickstart", small)
    argv = ["quickstart", "--out-dir", str(plan.out), "--device", "cpu", "--quiet"]
    assert run_cli(capsys, *argv)[0] == 0
    report, paths = reports[0]
    assert len(optuna.load_study(study_name="dm", storage=plan.storage).trials) == dm_trials == 2  # not retrained
    assert list(report.summary["method"]) == ["dm", "random", "early-stop"]
    for path in paths.values():
        assert path.stat().st_size > 0
    assert (plan.out / "digits-dm-ipc2.safetensors").exists()
    assert json.loads((plan.out / "report" / "config.json").read_text())["command"] == shlex.join(["proxynas", *argv])


def test_dashboard_without_the_extra_names_the_fix(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_dashboard(name, *args, **kwargs):
        if name.startswith("optuna_dashboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dashboard)
    code, _, err = run_cli(capsys, "dashboard")
    assert code == 2
    assert_one_line_error(err, "pip install 'proxynas[dashboard]'")


def test_space_show_prints_size_and_counts(capsys):
    code, stdout, _ = run_cli(capsys, "space", "show", "--sample", "3")
    assert code == 0
    assert "720 configurations" in stdout and "d1-w32-sigmoid-none-none" in stdout


def test_report_with_a_bad_top_is_one_line(capsys, tmp_path):
    db = tmp_path / "db.sqlite"
    db.touch()  # exists, so only --top can be wrong
    code, out, err = run_cli(
        capsys,
        "report",
        "--storage",
        f"sqlite:///{db}",
        "--proxy",
        "dm",
        "--whole",
        "whole",
        "--top",
        "abc",
        "--out",
        tmp_path / "report",
    )
    assert code == UsageError.exit_code and "Traceback" not in out + err
    assert "top must be a fraction" in err and "'abc'" in err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    "command,argv,fragments",
    [
        ("search", ["--repeats", "0"], ["--repeats must be at least 1", "not 0"]),
        ("baseline", ["--repeats", "-1"], ["--repeats must be at least 1"]),
        ("search", ["--devices", "cuda:0"], ["--devices 'cuda:0' asks for CUDA", "torch sees no CUDA GPU"]),
        ("score", ["--devices", "0,1"], ["--devices '0,1' asks for CUDA"]),
        ("search", ["--device", "cpu", "--devices", "cpu"], ["give --device", "or --devices", "not both"]),
        ("search", ["--workers", "0", "--device", "cpu"], ["--workers must be at least 1"]),
    ],
)
def test_repeats_and_devices_are_checked_before_any_study_exists(
    capsys, tmp_path, monkeypatch, command, argv, fragments
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    db = tmp_path / "db.sqlite"
    source = {
        "search": ["--proxy", tmp_path / "p.safetensors", "--study", "s"],
        "baseline": ["--kind", "whole", "--dataset", "digits", "--study", "s"],
        "score": ["--dataset", "digits"],
    }[command]
    code, _, err = run_cli(capsys, command, *source, "--storage", f"sqlite:///{db}", *argv, "--quiet")
    assert code == UsageError.exit_code
    assert_one_line_error(err, *fragments)
    assert not db.exists()


@pytest.mark.parametrize(
    "url,meant",
    [
        ("sqlite:{path}", "sqlite:///{path}"),  # one slash before an absolute path: four were meant
        ("{path}", "sqlite:///{path}"),  # a bare path
        ("sqlite://host{path}", None),  # SQLite has no host; SQLAlchemy would refuse it only later, in many lines
    ],
)
@pytest.mark.parametrize("command", ["search", "baseline", "report"])
def test_a_malformed_storage_url_is_one_line_with_the_url_meant(capsys, tmp_path, proxy, command, url, meant):
    db = tmp_path / "x" / "studies.db"
    url, meant = url.format(path=db), meant and meant.format(path=db)
    argv = {
        "search": ["--proxy", proxy, "--study", "s", "--device", "cpu", "--quiet"],
        "baseline": ["--kind", "whole", "--dataset", "digits", "--study", "s", "--device", "cpu", "--quiet"],
        "report": ["--proxy-studies", "dm", "--whole", "whole", "--out-dir", tmp_path / "report"],
    }[command]
    code, _, err = run_cli(capsys, command, *argv, "--storage", url)
    assert code == StudyError.exit_code
    fix = [f"give {meant};"] if meant else ["names no host"]
    assert_one_line_error(err, f"{url!r} is not a usable SQLAlchemy URL", *fix, "sqlite:////absolute/path")
    assert not (tmp_path / "x").exists() and not (tmp_path / "report").exists()


def test_the_dashboard_hint_stays_on_one_line_in_a_redirected_log(capsys, tmp_path):
    """A storage path longer than any terminal is wide: the command is still one line, to paste whole."""
    folder = tmp_path / ("a" * 200) / ("b" * 200)  # wider than the console (140 columns where output is a file)
    url = f"sqlite:///{folder / 'studies.db'}"
    restrict = "depth=1;width=32;act=relu;norm=none;pool=avg"  # one candidate, scored without training
    code, out, _ = run_cli(
        capsys, "score", "--dataset", "digits", "--metrics", "params", "--restrict", restrict, "--device", "cpu",
        "--storage", url, "--quiet",
    )  # fmt: skip
    assert code == 0
    (line,) = [line for line in out.splitlines() if "view it with" in line]
    assert line == f"study 'params' in {url}: 1 trials complete; view it with: proxynas dashboard --storage {url}"


def test_matplotlib_says_nothing_when_it_builds_its_font_cache(tmp_path):
    """A first plot on a new machine builds matplotlib's font cache, which it logs at INFO; proxynas shows
    only its own INFO lines. A report in a fresh MPLCONFIGDIR builds the cache."""
    import optuna
    from optuna.trial import create_trial

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    ids = ["d1-w8-relu-none-avg", "d1-w8-relu-instancenorm-avg", "d1-w16-relu-none-avg"]
    for name, kind, accs in (("dm", "proxy", [0.4, 0.3, 0.2]), ("whole", "whole", [0.9, 0.7, 0.8])):
        study = optuna.create_study(storage=url, study_name=name, direction="maximize")
        study.set_user_attr("kind", kind)
        for cid, acc in zip(ids, accs, strict=True):
            study.add_trial(create_trial(value=acc, user_attrs={"config_id": cid, "val_acc": acc, "test_acc": acc}))
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "MPLCONFIGDIR": str(tmp_path / "mpl")}
    argv = ["report", "--storage", url, "--proxy-studies", "dm", "--whole", "whole", "--top", "2", "--k", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "proxynas", *argv, "--out-dir", str(tmp_path / "report")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "mpl").glob("fontlist-*.json")), "the font cache was not built: nothing was tested"
    assert "fontManager" not in done.stderr + done.stdout


def test_help_states_the_device_rule(capsys):
    for name in ("search", "baseline", "score"):
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--devices DEVICES" in text and "not with --device" in text and "round-robin" in text
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    assert "--repeats REPEATS" in capsys.readouterr().out


# --- the command line: help, flag names, defaults that compose, outputs, progress --------------------------------


def _subparsers(parser):
    """(path, parser) of every parser under ``parser``, itself included."""
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _subparsers(sub)


def test_every_flag_of_every_command_has_a_help_text():
    missing = [
        f"{prog} {'/'.join(a.option_strings) or a.dest}"
        for prog, p in _subparsers(build_parser())
        for a in p._actions
        if not a.help and not isinstance(a, argparse._SubParsersAction)
    ]
    assert missing == []


def test_help_shows_defaults_examples_and_no_markup(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "``" not in top and "proxynas quickstart" in top
    for name, cmd in COMMANDS.items():
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert cmd.examples and "examples:" in text, name
        assert "PROTOCOL" not in text, name
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: sqlite:///results/proxynas.db)" in text and "(default: 250)" in text
    with pytest.raises(SystemExit):
        main(["condense", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "e.g. results/digits-dm-ipc10-ConvNet-s0.safetensors" in text and "(default: 0.1)" in text


@pytest.mark.parametrize("cmd", list(COMMANDS))
def test_every_example_parses(cmd):
    parser = build_parser()
    for example in COMMANDS[cmd].examples:
        words = shlex.split(example)
        assert words[:2] == ["proxynas", cmd]
        assert parser.parse_args(words[1:]).command == cmd


def test_default_output_name_is_the_one_the_help_states():
    from proxynas.cli import default_name
    from proxynas.core.condense import CondenseConfig

    assert default_name(CondenseConfig(dataset="digits")) == "digits-dm-ipc10-ConvNet-s0.safetensors"


@pytest.mark.parametrize(
    "argv,old,new,dest,value",
    [
        (["evaluate", "p.safetensors", "--batch", "32"], "--batch", "--batch-size", "batch_size", 32),
        (["search", "--proxy", "p", "--study", "s", "--batch", "50"], "--batch", "--batch-size", "batch_size", 50),
        (["score", "--dataset", "digits", "--minibatch", "8"], "--minibatch", "--batch-size", "batch_size", 8),
        (["condense", "--batch-real", "16"], "--batch-real", "--real-batch-size", "real_batch_size", 16),
        (
            ["report", "--proxy", "dm", "rnd", "--whole", "w"],
            "--proxy",
            "--proxy-studies",
            "proxy_studies",
            ["dm", "rnd"],
        ),
        (["report", "--proxy-studies", "dm", "--whole", "w", "--out", "r"], "--out", "--out-dir", "out_dir", Path("r")),
        (["quickstart", "--out", "q"], "--out", "--out-dir", "out_dir", Path("q")),
    ],
)
def test_renamed_flags_still_work_and_say_what_replaced_them(capsys, argv, old, new, dest, value):
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    assert capsys.readouterr().err.strip() == f"warning: {old} is deprecated; use {new}"
    # the new spelling: the same value, no warning; and the old one is not in --help
    assert getattr(build_parser().parse_args([new if w == old else w for w in argv]), dest) == value
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit):
        main([argv[0], "--help"])
    assert f"{old} " not in capsys.readouterr().out.replace(new, "")


def test_renamed_flag_keeps_the_new_default_when_unused():
    assert build_parser().parse_args(["evaluate", "p"]).batch_size == 256
    assert build_parser().parse_args(["report", "--proxy-studies", "dm", "--whole", "w"]).out_dir == Path(
        "results/report"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "--proxy", "p", "--study", "s"],
        ["baseline", "--kind", "whole", "--dataset", "digits", "--study", "w"],
    ],
)
def test_compile_flag_reaches_the_training_config(argv):
    cmd = COMMANDS[argv[0]]
    for flags, want in (([], False), (["--compile"], True)):
        args = build_parser().parse_args([*argv, *flags])
        args.argv = [*argv, *flags]
        assert cmd.config(args).train.compile is want


def test_condense_defaults_give_a_proxy_set_that_search_accepts(capsys, tmp_path, monkeypatch):
    """The default condense output holds the validation split out, so search takes it as it is."""
    from proxynas.exceptions import StudyError
    from proxynas.nas.sources import proxy_source

    monkeypatch.chdir(tmp_path)
    code, stdout, _ = run_cli(capsys, "condense", "--method", "random", "--ipc", "1", "--quiet")
    assert code == 0
    proxy = tmp_path / "results" / "digits-random-ipc1-ConvNet-s0.safetensors"  # the name --help states
    assert proxy.exists() and str(proxy.relative_to(tmp_path)) in stdout
    assert SyntheticSet.load(proxy).meta["split"]["val_fraction"] == 0.1
    source = proxy_source(proxy)  # what 'proxynas search' trains on: it refuses a set without a held-out split
    assert len(source.split.val_idx) > 0 and len(source.labels) == 10
    with pytest.raises(StudyError, match="--exclude-split 0.1"):  # 0 disables the hold-out; search says so
        proxy_source(_condensed(capsys, tmp_path, "--exclude-split", "0"))


def _condensed(capsys, tmp_path, *argv) -> Path:
    out = tmp_path / f"p{len(list(tmp_path.iterdir()))}.safetensors"
    assert run_cli(capsys, "condense", "--method", "random", "--ipc", "1", "--quiet", "--out", out, *argv)[0] == 0
    return out


def test_outputs_follow_the_umask_and_carry_a_config_that_round_trips(capsys, tmp_path):
    from proxynas.core.condense import CondenseConfig, config_path

    old = os.umask(0o022)
    try:
        out = _condensed(capsys, tmp_path, "--seed", "3")
        for path in (out, out.with_suffix(".png"), config_path(out)):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path  # not mkstemp's 0o600
        os.umask(0o077)
        private = _condensed(capsys, tmp_path)
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    config = json.loads(config_path(out).read_text())
    syn = SyntheticSet.load(out)
    assert config["file"] == out.name and config["command"].startswith("proxynas condense --method random")
    assert "--seed 3" in config["command"] and config["seed"] == 3 and syn.meta["command"] == config["command"]
    assert CondenseConfig.from_dict(config["config"]) == CondenseConfig.from_dict(syn.meta["config"])
    assert config["dataset"] == syn.meta["dataset"] and config["versions"]["torch"] == torch.__version__
    assert {k: v for k, v in config.items() if k != "file"} == {
        k: v for k, v in syn.meta.items() if k not in ("loss_curve", "selected_indices")
    }


def test_datasets_and_networks_list_without_building_anything(capsys):
    code, stdout, _ = run_cli(capsys, "datasets")
    assert code == 0
    digits = next(line for line in stdout.splitlines() if " digits " in line)
    assert "32x32" in digits and " yes " in digits and "scikit-learn" in digits
    assert " no " in next(line for line in stdout.splitlines() if " imagenet " in line)
    code, stdout, _ = run_cli(capsys, "networks", "--filter", "ResNet18")
    assert code == 0 and "11,173,962" in stdout  # ResNet-18's parameters, counted on the meta device


def test_space_show_lists_every_axis_and_a_sample_that_covers_it(capsys):
    from proxynas.core.networks import NetConfig
    from proxynas.nas.search_space import load_space

    code, stdout, _ = run_cli(capsys, "space", "show", "--sample", "5")
    assert code == 0 and "none, batchnorm, layernorm, instancenorm, groupnorm" in stdout
    space = load_space()
    sample = space.covering_sample(5)
    assert len(sample) == 5 and all(cid in stdout for cid in sample)
    for axis, values in space.axes.items():  # 5 ids cover every value of every axis (the longest has 5)
        assert {getattr(NetConfig.from_id(cid), axis) for cid in sample} == set(values), axis


def test_progress_lines_reach_a_redirected_log_while_the_run_is_going(tmp_path):
    """A real condense with stderr to a pipe: timestamped lines with the count and an ETA, before it ends."""
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxynas",
            "condense",
            "--ipc",
            "1",
            "--model",
            TINY_MODEL,
            "--iterations",
            "100000",
            "--real-batch-size",
            "4",
            "--tune",
            "no",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "p.safetensors"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_default,
    )
    try:
        lines = []
        while not any(" 1/100000 " in line for line in lines):
            line = proc.stderr.readline()
            assert line, "".join(lines)  # the run ended (or failed) before its first step was logged
            lines.append(line)
        assert proc.poll() is None  # still running: the line came while it runs, not at exit
        first = lines[-1].rstrip("\n")
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d condense dm 1/100000 \(0%\) loss \d+\.\d{4} "
            r"\| elapsed \d+:\d\d:\d\d \| ETA \d+:\d\d:\d\d",
            first,
        ), first
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert "--resume" in rest  # condense can continue, and says how
    assert all(line.rstrip("\n") == line.rstrip() for line in (*lines, *rest.splitlines()))  # no trailing spaces


def test_a_command_without_resume_never_advises_it(capsys, monkeypatch):
    from proxynas.core import networks

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(networks, "describe_many", interrupt)
    code, _, err = run_cli(capsys, "networks")
    assert code == 130 and "--resume" not in err and "interrupted" in err


def test_the_quickstart_says_where_its_time_went():
    from proxynas.cli import stage_times

    starts = {"condense dm": 10.0, "condense random": 75.4, "report": 200.0}
    assert stage_times(starts, 201.2) == (
        "0:03:11 in all: condense dm 0:01:05, condense random 0:02:05, report 0:00:01"
    )
