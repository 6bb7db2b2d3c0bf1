"""Tests for proxynas.nas.search_space: the bundled 720-ConvNet space, user files, errors, Optuna."""

from __future__ import annotations

import itertools
import json
import tomllib
from pathlib import Path

import optuna
import pytest
import torch

from proxynas.core.networks import NetConfig, build, count_params, describe
from proxynas.exceptions import SearchSpaceError
from proxynas.nas.search_space import SearchSpace, bundled_spaces, describe_space, load_space

REPO = Path(__file__).resolve().parents[1]

# docs/protocol.md §5, written out independently of search_spaces/convnet720.toml
PAPER_AXES = {
    "depth": (1, 2, 3, 4),
    "width": (32, 64, 128, 256),
    "act": ("sigmoid", "relu", "leakyrelu"),
    "norm": ("none", "batchnorm", "layernorm", "instancenorm", "groupnorm"),
    "pool": ("none", "max", "avg"),
}


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return load_space()


def write(tmp_path: Path, text: str, name: str = "my-space.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_bundled_space_is_the_papers_720_in_a_stable_order(space):
    assert bundled_spaces() == ["convnet720"]
    assert space == load_space("convnet720")
    assert (space.name, space.source) == ("convnet720", "bundled:convnet720")
    assert space.axes == PAPER_AXES
    assert len(space) == 720
    expected = [NetConfig(*values) for values in itertools.product(*PAPER_AXES.values())]
    assert space.configs() == expected  # the last axis (pool) varies fastest
    ids = space.ids()
    assert len(set(ids)) == 720
    assert ids[:6] == [
        "d1-w32-sigmoid-none-none", "d1-w32-sigmoid-none-max", "d1-w32-sigmoid-none-avg",
        "d1-w32-sigmoid-batchnorm-none", "d1-w32-sigmoid-batchnorm-max", "d1-w32-sigmoid-batchnorm-avg",
    ]  # fmt: skip
    assert ids[-1] == "d4-w256-leakyrelu-groupnorm-avg"
    assert [NetConfig.from_id(i) for i in ids] == expected


def test_every_configuration_builds_at_both_input_sizes(space):
    space.check_buildable(3, 32)  # all 720, on the meta device
    space.check_buildable(1, 28)


def test_a_sample_covering_every_value_really_runs(space):
    # Real builds and forwards of all 720 take ~90 s on a CPU: every 37th config instead,
    # which (as asserted) covers every value of every axis.
    sample = space.configs()[::37]
    for axis, values in space.axes.items():
        assert {getattr(cfg, axis) for cfg in sample} == set(values), axis
    for channels, size in [(3, 32), (1, 28)]:
        table = describe_space(space, channels, 10, size, ids=[cfg.id for cfg in sample])
        for cfg, params in zip(sample, table["params"], strict=True):
            model = build(cfg.id, channels, 10, size, seed=0)  # by id, through the registry's build
            logits = model(torch.randn(2, channels, size, size))
            assert logits.shape == (2, 10) and torch.isfinite(logits).all(), cfg.id
            assert count_params(model) == params, cfg.id


def test_describe_space_hand_checked_counts(space):
    table = describe_space(space, 3, 10, 32, ids=["d1-w32-relu-none-avg", "d2-w64-relu-batchnorm-max"])
    assert list(table.columns) == ["id", "depth", "width", "act", "norm", "pool", "params", "flops"]
    assert table["id"].tolist() == ["d1-w32-relu-none-avg", "d2-w64-relu-batchnorm-max"]
    row = table.iloc[0]
    assert (row.depth, row.width, row.act, row.norm, row.pool) == (1, 32, "relu", "none", "avg")
    # conv 3->32 3x3 (864 + 32 bias) on a 32x32 map, avg-pooled to 16x16, then linear 8192->10
    assert row.params == 896 + 32 * 16 * 16 * 10 + 10 == 82_826
    assert row.flops == 2 * (32 * 32 * 32 * 27 + 32 * 16 * 16 * 10) == 1_933_312
    for net_id, params, flops in zip(table["id"], table["params"], table["flops"], strict=True):
        assert describe(net_id, 3, 10, 32) == {"params": params, "flops": flops}
    mnist = describe_space(space, 1, 10, 28, ids=["d1-w32-relu-none-avg"]).iloc[0]
    assert mnist.params == 9 * 32 + 32 + 32 * 16 * 16 * 10 + 10  # padded to the 32x32 map of CIFAR
    assert mnist.flops == 2 * (32 * 32 * 32 * 9 + 32 * 16 * 16 * 10)
    with pytest.raises(SearchSpaceError, match=r"^bundled:convnet720: 'd9-w32-relu-none-avg' is not in"):
        describe_space(space, 3, 10, 32, ids=["d9-w32-relu-none-avg"])


def test_user_file_with_other_axes_and_defaults(tmp_path):
    path = write(tmp_path, '[axes]\nwidth = [16, 8]\npool = ["max", "none"]\n')
    for spec in (path, str(path)):
        custom = load_space(spec)
        assert (custom.name, custom.source, custom.description) == ("my-space", str(path), "")
        assert custom.ids() == [  # depth, act and norm keep NetConfig's defaults
            "d3-w16-relu-instancenorm-max", "d3-w16-relu-instancenorm-none",
            "d3-w8-relu-instancenorm-max", "d3-w8-relu-instancenorm-none",
        ]  # fmt: skip
    table = describe_space(custom, 3, 2, 16)
    assert list(table.columns) == ["id", "width", "pool", "params", "flops"]
    named = load_space(write(tmp_path, 'name = "tiny"\ndescription = "two widths"\n[axes]\ndepth = [1]\n'))
    assert (named.name, named.description, named.ids()) == ("tiny", "two widths", ["d1-w128-relu-instancenorm-avg"])


@pytest.mark.parametrize(
    "text,message",
    [
        ('[axes]\ndepth = 1 2\n',
         "not valid TOML: Expected newline or end of document after a statement (at line 2, column 11)"),
        ('[axes]\nkernel = [3]\n', "axes.kernel: unknown axis; allowed axes: depth, width, act, norm, pool"),
        ('[axes]\ndepth = []\n', "axes.depth: empty list; give at least one value"),
        ('[axes]\ndepth = 3\n', "axes.depth: must be a list of values, got 3"),
        ('[axes]\nwidth = [32, 64, 32]\n', "axes.width: 32 is listed twice"),
        ('[axes]\nact = ["relu", "swish"]\n',
         "axes.act: 'swish' is not valid (NetConfig act 'swish' is not one of: sigmoid, relu, leakyrelu)"),
        ('[axes]\ndepth = [0]\n', "axes.depth: 0 is not valid (NetConfig depth must be an integer >= 1, got 0)"),
        ('[axes]\ndepth = [true]\n',
         "axes.depth: True is not valid (NetConfig depth must be an integer >= 1, got True)"),
        ('[axes]\nwidth = [32.0]\n', "axes.width: 32.0 is not valid (values are strings or integers)"),
        ('[axes]\nnorm = [["none"]]\n', "axes.norm: ['none'] is not valid (values are strings or integers)"),
        ('[axes]\nwidth = [30, 32]\nnorm = ["groupnorm"]\n',
         "axes: width=30, norm='groupnorm' is not a valid combination (groupnorm uses 4 groups"),
        ('nmae = "x"\n[axes]\ndepth = [1]\n', "nmae: unknown key; the keys are: name, description, axes"),
        ('name = "x"\n', "axes: missing or not a table; add an [axes] table of NetConfig fields"),
        ('axes = [1]\n', "axes: missing or not a table"),
        ('[axes]\n', "axes: no axes; list at least one of: depth, width, act, norm, pool"),
        ('name = 3\n[axes]\ndepth = [1]\n', "name: must be a non-empty string, got 3"),
    ],
)  # fmt: skip
def test_invalid_file_is_refused_in_one_line_naming_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SearchSpaceError) as err:
        load_space(path)
    assert str(err.value).startswith(f"{path}: "), str(err.value)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_unreadable_or_binary_file(tmp_path):
    with pytest.raises(
        SearchSpaceError, match=r"^search space 'nope.toml' not found: .* bundled spaces are convnet720$"
    ):
        load_space("nope.toml")
    with pytest.raises(SearchSpaceError, match="cannot read the search space file"):
        load_space(tmp_path)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(SearchSpaceError, match="binary.toml: not valid TOML: 'utf-8' codec can't decode"):
        load_space(binary)


def test_check_buildable_names_the_first_network_that_cannot_run(tmp_path):
    deep = load_space(write(tmp_path, '[axes]\ndepth = [5, 6]\npool = ["none", "avg"]\n'))
    deep.check_buildable(3, 64)  # 64 / 2**6 = 1
    deep.restrict("depth=6;pool=none").check_buildable(3, 32)  # no pooling: the map keeps its size
    # 32 / 2**6 < 1: the first failing config in enumeration order is depth 6 with avg pooling
    with pytest.raises(SearchSpaceError, match=r"my-space.toml: d6-w128-relu-instancenorm-avg cannot run on 3x32x32"):
        deep.check_buildable(3, 32)
    with pytest.raises(SearchSpaceError, match="d6-w128-relu-instancenorm-avg cannot run on 1x28x28"):
        describe_space(deep, 1, 10, 28)


def test_restrict(space):
    sub = space.restrict(" norm = instancenorm,batchnorm ; depth=2,1")
    assert sub.name == "convnet720[depth=1,2;norm=batchnorm,instancenorm]"  # this space's order, not the spec's
    assert sub.axes == {**PAPER_AXES, "depth": (1, 2), "norm": ("batchnorm", "instancenorm")}
    assert len(sub) == len(sub.ids()) == 2 * 4 * 3 * 2 * 3
    full, kept = space.ids(), set(sub.ids())
    assert sub.ids() == [i for i in full if i in kept]  # a subsequence of the full order
    assert space.restrict("width=64").restrict("pool=max").ids() == [
        i for i in full if "-w64-" in i and i.endswith("-max")
    ]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("kernel=3", "unknown axis 'kernel'; the axes are: depth, width, act, norm, pool"),
        ("depth=1,7", "depth='7' is not in the space; choose from: 1, 2, 3, 4"),
        ("depth=", "depth='' is not in the space"),
        ("depth", "expected axis=value,...;axis=... as in depth=1,2;pool=max"),
        ("depth=1;", "expected axis=value"),
        ("depth=1;depth=2", "axis 'depth' is given twice"),
    ],
)
def test_restrict_refuses_bad_specs(space, spec, message):
    with pytest.raises(SearchSpaceError, match=r"^bundled:convnet720: restriction ") as err:
        space.restrict(spec)
    assert message in str(err.value)


def test_suggest_with_fixed_trial_random_and_grid_samplers(space):
    fixed = optuna.trial.FixedTrial({"depth": 2, "width": 64, "act": "relu", "norm": "batchnorm", "pool": "max"})
    assert space.suggest(fixed).id == "d2-w64-relu-batchnorm-max"

    ids = set(space.ids())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: float(space.suggest(trial).depth), n_trials=20)
    for trial in study.trials:
        assert set(trial.params) == set(PAPER_AXES)
        assert NetConfig(**trial.params).id in ids
        assert trial.distributions["norm"].choices == PAPER_AXES["norm"]

    sub = space.restrict("depth=1;width=32;act=relu;norm=none,groupnorm")  # 2 x 3 pools = 6
    grid = optuna.create_study(sampler=optuna.samplers.GridSampler(sub.to_dict()["axes"], seed=0))
    seen: list[str] = []

    def objective(trial: optuna.Trial) -> float:
        seen.append(sub.suggest(trial).id)
        return 0.0

    grid.optimize(objective, n_trials=len(sub))
    assert sorted(seen) == sorted(sub.ids())  # the grid visits each configuration once


def test_to_dict_is_json_and_axes_are_a_private_copy(tmp_path):
    values = [1, 2]
    own = SearchSpace("own", {"depth": values}, source="test")
    values.append(3)
    assert own.axes == {"depth": (1, 2)} and len(own) == 2
    record = own.to_dict()
    assert json.loads(json.dumps(record)) == {
        "name": "own", "description": "", "source": "test", "size": 2, "axes": {"depth": [1, 2]},
    }  # fmt: skip
    with pytest.raises(SearchSpaceError, match=r"^test: axes.depth: 'x' is not valid"):
        SearchSpace("own", {"depth": ["x"]}, source="test")


def test_pyproject_ships_the_bundled_spaces_and_every_subpackage():
    # The package list is written out (a find cannot see search_spaces/): it must name
    # every subpackage of proxynas/, or a plain `pip install .` would leave one out.
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    subpackages = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "proxynas").rglob("__init__.py")}
    assert set(setuptools["packages"]) == subpackages | {"proxynas.search_spaces"}
    assert setuptools["package-dir"] == {"proxynas.search_spaces": "search_spaces"}
    assert setuptools["package-data"]["proxynas.search_spaces"] == ["*.toml"]
    assert {p.stem for p in (REPO / "search_spaces").glob("*.toml")} == set(bundled_spaces())
