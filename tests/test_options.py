"""One source for every option: each flag that sets a config field takes its default from that field.

The CLI builds those flags from the config dataclasses' field metadata (runtime/options.py);
these tests walk every command's parser and scan cli/__init__.py's source to show that no
default the config classes hold is written again in the CLI.
"""

from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import proxynas
import proxynas.cli as cli
import proxynas.cli.quickstart as quickstart
from proxynas.analysis.dashboard import Address
from proxynas.analysis.statistics import DEFAULT_K
from proxynas.cli import COMMANDS, build_parser, main
from proxynas.cli.quickstart import QuickstartPlan
from proxynas.core.condense import MMD_KERNELS, CondenseConfig
from proxynas.core.networks import InputShape
from proxynas.core.train import TrainConfig
from proxynas.core.zero_cost import ZERO_COST
from proxynas.nas.kinds import baseline_budget
from proxynas.nas.search import SearchConfig
from proxynas.nas.storage_server import ServerConfig
from proxynas.nas.study import HeartbeatSettings
from proxynas.runtime.devices import Placement
from proxynas.runtime.options import action_field, add_options, default_of, from_args, options_of

CONFIGS = (
    CondenseConfig,
    TrainConfig,
    SearchConfig,
    HeartbeatSettings,
    ServerConfig,
    Placement,
    QuickstartPlan,
    InputShape,
    Address,
)


def _parsers(parser: argparse.ArgumentParser):
    """(prog, parser) of ``parser`` and every parser under it."""
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def _command_parser(name: str) -> argparse.ArgumentParser:
    top = build_parser(name)
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _config_flags(name: str) -> set[str]:
    """Every spelling of every option of the config classes command ``name`` builds flags from."""
    classes = {field[0] for _, p in _parsers(_command_parser(name)) for a in p._actions if (field := action_field(a))}
    return {flag for cls in classes for opt in options_of(cls).values() for flag in opt.flags()}


def _is_config_default(value: object) -> bool:
    """Is ``value`` the default of some config field (a nested config's own default, e.g. SearchConfig.train)?"""
    return any(default_of(cls, f.name) == value for cls in CONFIGS for f in dataclasses.fields(cls))


def test_every_flag_that_sets_a_config_field_defaults_to_the_fields_default():
    checked = 0
    for prog, parser in _parsers(build_parser()):
        for action in parser._actions:
            if (field := action_field(action)) is None:
                continue
            cls, source, name = field
            if source is None:  # unset: the command takes it from elsewhere (a baseline's budget from its kind)
                assert action.default is None, (prog, action.option_strings)
                continue
            if not isinstance(source, type):
                assert isinstance(source, cls) and _is_config_default(source), (prog, name, source)
            want = default_of(source, name)
            if want is dataclasses.MISSING:  # no default: the flag is required
                assert action.required and action.default is None, (prog, action.option_strings)
            else:
                assert action.default is want, (prog, action.option_strings, action.default, want)
            checked += 1
    assert checked > 60  # every command with a config: condense, evaluate, search, baseline, score, ...


@pytest.mark.parametrize("name", list(COMMANDS))
def test_no_flag_of_a_command_is_declared_by_hand_beside_its_config_field(name):
    flags = _config_flags(name)
    for prog, parser in _parsers(_command_parser(name)):
        for action in parser._actions:
            if action_field(action) is None and action.default is not argparse.SUPPRESS:
                assert not flags & set(action.option_strings), (prog, action.option_strings)


def _literal(node: ast.expr) -> bool:
    """A value written out in the source: a constant, a container of them, or a call on them (Path("x"))."""
    try:
        ast.literal_eval(node)
        return True
    except ValueError:
        return isinstance(node, ast.Call) and not node.keywords and all(_literal(a) for a in node.args)


def _literal_defaults(source: str) -> dict[str, set[tuple[str, str]]]:
    """For each command class of the CLI's source: the (flag, default) pairs written as literals in the
    calls that add its arguments, in its own methods and in the module's functions they call."""
    tree = ast.parse(source)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}

    def found(node: ast.AST, seen: set[str]) -> set[tuple[str, str]]:
        pairs = set()
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
            callee = call.func.id if isinstance(call.func, ast.Name) else None
            if callee in functions and callee not in seen:
                seen.add(callee)
                pairs |= found(functions[callee], seen)
            default = next((k.value for k in call.keywords if k.arg == "default"), None)
            if default is not None and _literal(default):
                flags = [a.value for a in call.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")]
                pairs |= {(flag, ast.unparse(default)) for flag in flags}
        return pairs

    return {n.name: found(n, set()) for n in tree.body if isinstance(n, ast.ClassDef)}


CLI_SOURCES = [Path(inspect.getfile(cli)), Path(inspect.getfile(quickstart))]


def _library_defaults() -> dict[str, list[tuple[str, object]]]:
    """Name -> (where, default) of every default the library below the CLI holds: each dataclass field's,
    and each parameter's of its functions and methods, module by module."""
    held: dict[str, list[tuple[str, object]]] = collections.defaultdict(list)
    for info in pkgutil.walk_packages(proxynas.__path__, "proxynas."):
        if info.name.startswith("proxynas.cli") or info.name == "proxynas.__main__":
            continue
        module = importlib.import_module(info.name)
        for owner in vars(module).values():
            if getattr(owner, "__module__", None) != module.__name__:
                continue  # imported, found where it is defined
            if dataclasses.is_dataclass(owner) and isinstance(owner, type):
                for f in dataclasses.fields(owner):
                    if (value := default_of(owner, f.name)) is not dataclasses.MISSING:
                        held[f.name].append((f"{owner.__qualname__}.{f.name}", value))
            members = vars(owner).values() if isinstance(owner, type) else [owner]
            for function in (m for m in members if inspect.isfunction(m)):
                for p in inspect.signature(function).parameters.values():
                    if p.default is not inspect.Parameter.empty:
                        held[p.name].append((f"{function.__qualname__}({p.name})", p.default))
    return held


def test_the_cli_source_writes_no_default_that_the_library_also_holds():
    """A literal default in the CLI is a second copy where a config field or a library function holds the same
    value under the flag's name (``--k 10`` beside ``build_report(k=10)``): it must come from there instead."""
    held = _library_defaults()
    assert ("DashboardCommand", "--port", "8080") not in {  # the dashboard's port is Address.port's now
        (c, f, v) for c, pairs in _literal_defaults(CLI_SOURCES[0].read_text()).items() for f, v in pairs
    }
    assert ("Address.port", 8080) in held["port"] and ("build_report(k)", DEFAULT_K) in held["k"]  # the scan sees
    copies = []
    for path in CLI_SOURCES:
        for command, pairs in _literal_defaults(path.read_text()).items():
            for flag, text in pairs:
                value = eval(text, {"Path": Path, "ZERO_COST": ZERO_COST})  # a literal, or a call on literals
                dest = flag.lstrip("-").replace("-", "_")
                copies += [(command, flag, text, where) for where, d in held.get(dest, []) if _same(d, value)]
    assert not copies


def _same(a: object, b: object) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # a tensor or array default compares elementwise: not a flag's value
        return False


def test_the_scan_finds_a_literal_default_wherever_it_is_written():
    source = """
def _group(p):
    p.add_argument("--epochs", type=int, default=200)

class SearchCommand:
    def add_arguments(self, p):
        _group(p)
        add_argument(p, "--out-dir", "--out", default=Path("results/x"))
"""
    assert _literal_defaults(source)["SearchCommand"] == {
        ("--epochs", "200"),
        ("--out-dir", "Path('results/x')"),
        ("--out", "Path('results/x')"),
    }


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_and_subcommand_has_help_that_lists_its_config_flags(capsys, name):
    for prog, parser in _parsers(_command_parser(name)):
        words = prog.split()[1:]
        with pytest.raises(SystemExit) as e:
            main([*words, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: {prog}")
        for action in parser._actions:
            if action_field(action) is not None:
                assert action.option_strings[0] in text, (prog, action.option_strings)


def test_help_shows_the_dataclass_default():
    assert CondenseConfig().val_fraction == 0.1  # one default: the one condense's --help states
    text = " ".join(_command_parser("condense").format_help().split())
    assert "(the paper's 10%); 0 condenses all of train (Table 1) (default: 0.1)" in text
    search = " ".join(_command_parser("search").format_help().split())
    train = default_of(SearchConfig, "train")
    assert f"--epochs EPOCHS training epochs per network; the lr drops x0.1 at half (default: {train.epochs})" in search


# --- from_args: the config a parsed command line gives -----------------------------------------------------------


def _parse(cls: type, argv: list[str], **kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_options(parser, cls, **kw)
    return parser.parse_args(argv)


ROUND_TRIPS = [
    (
        TrainConfig,
        "--epochs 7 --steps 9 --batch-size 32 --lr 0.1 --dsa-strategy none --dsa-family image --precision bf16 "
        "--compile",
        {},
        TrainConfig(
            epochs=7,
            steps=9,
            batch_size=32,
            lr=0.1,
            dsa_strategy="none",
            dsa_family="image",
            precision="bf16",
            compile=True,
        ),
    ),
    (
        CondenseConfig,
        "--dataset cifar10 --data-path d --method m3d --ipc 3 --model ConvNetD1 --iterations 5 --real-batch-size 8 "
        "--lr-img 0.5 --init noise --seed 4 --dsa-strategy color --exclude-split 0 --split-seed 2 --precision bf16 "
        "--memory-budget-gb 0.5 --tune no --checkpoint-every 7 --checkpoint-minutes 1.5 --factor 2 "
        "--mmd-kernel linear --classes 1,2",
        {"classes": (1, 2)},
        CondenseConfig(
            dataset="cifar10",
            data_path="d",
            method="m3d",
            ipc=3,
            model="ConvNetD1",
            iterations=5,
            batch_real=8,
            lr_img=0.5,
            init="noise",
            seed=4,
            dsa_strategy="color",
            val_fraction=0.0,
            split_seed=2,
            classes=(1, 2),
            precision="bf16",
            memory_budget=2**29,  # GiB given, bytes held
            tune="no",
            checkpoint_every=7,
            checkpoint_minutes=1.5,
            factor=2,
            mmd_kernel="linear",
        ),
    ),
    (
        SearchConfig,
        "--study s --proxy p.safetensors --batch-size 16 --dataset digits --exclude-split 0.2 --split-seed 3 "
        "--storage sqlite:///x.db --space convnet720 --restrict depth=1 --sampler tpe --n-trials 4 --timeout 60 "
        "--prune --repeats 2 --seed 5 --data-path d --configs a,b",
        {"configs": ("a", "b")},
        SearchConfig(
            study="s",
            proxy="p.safetensors",
            zero_cost_batch=16,
            dataset="digits",
            val_fraction=0.2,
            split_seed=3,
            configs=("a", "b"),
            storage="sqlite:///x.db",
            space="convnet720",
            restrict="depth=1",
            sampler="tpe",
            n_trials=4,
            timeout=60.0,
            prune=True,
            repeats=2,
            seed=5,
            data_path="d",
        ),
    ),
    (
        SearchConfig,
        "--study s --kind early-stop --dataset digits",
        {},
        SearchConfig(study="s", baseline="early-stop", dataset="digits"),
    ),
    (HeartbeatSettings, "--heartbeat 5 --grace 30", {}, HeartbeatSettings(5, 30)),
    (InputShape, "--channels 1 --image-size 64 --num-classes 200", {}, InputShape(1, 64, 200)),
    (Address, "--host 0.0.0.0 --port 8081", {}, Address("0.0.0.0", 8081)),
    (
        ServerConfig,
        "--storage sqlite:///x.db --host 0.0.0.0 --port 14000 --threads 2",
        {},
        ServerConfig("sqlite:///x.db", "0.0.0.0", 14000, 2),
    ),
    (Placement, "--devices cpu --workers 3", {}, Placement(devices="cpu", workers=3)),
    (Placement, "--device cpu", {}, Placement(device="cpu")),
    (QuickstartPlan, "--out-dir q --device cpu", {}, QuickstartPlan(out=Path("q"), device="cpu")),
]


@pytest.mark.parametrize("cls,argv,overrides,want", ROUND_TRIPS, ids=[c[0].__name__ for c in ROUND_TRIPS])
def test_from_args_gives_the_config_the_flags_name(cls, argv, overrides, want):
    choices = {"mmd_kernel": MMD_KERNELS.names()} if cls is CondenseConfig else None
    assert from_args(cls, _parse(cls, argv.split(), choices=choices), **overrides) == want


@pytest.mark.parametrize("cls", CONFIGS)
def test_the_round_trips_set_every_option_away_from_its_default(cls):
    """So each flag is shown to reach its field."""
    moved = {
        name
        for c, _, _, want in ROUND_TRIPS
        if c is cls
        for name in options_of(cls)
        if getattr(want, name) != default_of(cls, name)
    }
    assert moved == set(options_of(cls))


@pytest.mark.parametrize("cls", CONFIGS)
def test_from_args_of_no_flags_is_the_default_config(cls):
    required = {f.name: "x" for f in dataclasses.fields(cls) if default_of(cls, f.name) is dataclasses.MISSING}
    argv = [w for name, v in required.items() for w in (options_of(cls)[name].flag, v)]
    if cls is SearchConfig:
        argv += ["--proxy", "p"]  # a study needs one source
        required["proxy"] = "p"
    assert from_args(cls, _parse(cls, argv)) == cls(**required)


def test_from_args_keeps_the_base_where_a_flag_is_unset():
    budget = baseline_budget("early-stop")
    unset = ("epochs", "steps", "batch_size")
    assert from_args(TrainConfig, _parse(TrainConfig, [], unset=unset), budget) == budget
    given = from_args(TrainConfig, _parse(TrainConfig, ["--steps", "12", "--lr", "0.1"], unset=unset), budget)
    assert given == dataclasses.replace(budget, steps=12, lr=0.1)


def test_a_derived_field_must_be_given_by_the_command():
    args = _parse(CondenseConfig, ["--classes", "0,1"], choices={"mmd_kernel": MMD_KERNELS.names()})
    with pytest.raises(TypeError, match="--classes"):
        from_args(CondenseConfig, args)
    assert from_args(CondenseConfig, args, classes=(0, 1)).classes == (0, 1)


def test_add_options_refuses_a_name_that_is_no_option_field():
    with pytest.raises(ValueError, match="no option field momentum"):
        add_options(argparse.ArgumentParser(), TrainConfig, only=("epochs", "momentum"))


def test_the_top_level_help_builds_no_command_and_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys\nfrom proxynas.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'proxynas.core.train', 'proxynas.nas.search') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


# QuickstartPlan states its own plan (digits at ipc 10, seed 0): it builds its flags without importing torch, and its
# choices are the quickstart's, equal to condense's defaults today without being them
OWN_PLAN = {("QuickstartPlan", "dataset"), ("QuickstartPlan", "ipc"), ("QuickstartPlan", "seed")}


def _literal_field_defaults(source: str) -> list[tuple[str, str, str]]:
    """(class, field, default) of each dataclass field in ``source`` whose default is written as a literal."""
    found = []
    for cls in (n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef)):
        if not any("dataclass" in ast.unparse(d) for d in cls.decorator_list):
            continue
        for stmt in cls.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value):
                continue
            value = stmt.value
            if isinstance(value, ast.Call) and ast.unparse(value.func) == "field":
                value = next((k.value for k in value.keywords if k.arg == "default"), None)
            own = isinstance(value, ast.Call) and not value.args and not value.keywords  # a config's own defaults
            if value is not None and _literal(value) and not own and ast.unparse(value) not in ("None", "False", "()"):
                found.append((cls.name, stmt.target.id, ast.unparse(value)))
    return found


def test_no_two_config_classes_write_the_same_default_for_one_setting():
    """``seed: int = 0`` in two configs is one default typed twice: it lives in one constant both name."""
    written = collections.defaultdict(list)
    for path in sorted(Path(proxynas.__file__).parent.rglob("*.py")):
        for cls, name, value in _literal_field_defaults(path.read_text()):
            if (cls, name) not in OWN_PLAN:
                written[name, value].append(cls)
    assert not {key: classes for key, classes in written.items() if len(classes) > 1}


def test_the_field_scan_finds_literal_defaults_and_not_named_ones():
    source = """
@dataclass(frozen=True)
class A:
    seed: int = 0
    lr: float = field(default=0.01, metadata=option("--lr", help="x"))
    device: str = DEFAULT_DEVICE
    tags: tuple = ()
    beat: Heartbeat = Heartbeat()
"""
    assert _literal_field_defaults(source) == [("A", "seed", "0"), ("A", "lr", "0.01")]
