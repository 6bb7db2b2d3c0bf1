"""A condensation method is one function and one registration: two toy methods registered here,
in a test module as a plugin would be, run end to end from ``proxynas condense``.

``mean`` makes each synthetic image its class's mean real image. ``pull`` learns images by plain
gradient descent on ½||s − mean||² in the shared ``ResumableLoop``, so it checkpoints, resumes
and reports without code of its own; with learning rate η from zero images, iteration k's loss
is ½(1 − η)^{2k}||mean||² and the images after n iterations are (1 − (1 − η)^n)·mean.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch

from proxynas.core.condense import (
    Checkpoint,
    CondenseConfig,
    MethodResult,
    Problem,
    Reporter,
    ResumableLoop,
    SyntheticSet,
    checkpoint_path,
    register_method,
)
from proxynas.core.data import load_dataset
from tests.conftest import assert_one_line_error, run_cli

STOP_BEFORE: set[int] = set()  # iterations at which ``pull`` is Ctrl-C'd (a test sets them)


def class_means(problem: Problem) -> torch.Tensor:
    """(K, C, H, W): the mean normalised image of each of the run's classes, over its pool."""
    return torch.stack([problem.real_images(problem.pools[c]).mean(0) for c in problem.classes])


@register_method("mean", summary="each image is its class's mean real image (a test's toy)")
def condense_mean(problem: Problem, cfg: CondenseConfig, ckpt: Checkpoint, report: Reporter | None) -> MethodResult:
    return MethodResult(class_means(problem).repeat_interleave(cfg.ipc, dim=0), {"toy": "mean"})


@register_method("pull", summary="gradient descent of zero images towards their class mean (a test's toy)")
def condense_pull(problem: Problem, cfg: CondenseConfig, ckpt: Checkpoint, report: Reporter | None) -> MethodResult:
    target = class_means(problem).repeat_interleave(cfg.ipc, dim=0)
    syn = torch.zeros_like(target).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=cfg.lr_img or 0.5)  # no momentum: the result has a closed form
    iterations = cfg.iterations if cfg.iterations is not None else 8
    loop = ResumableLoop(syn, opt, iterations, ckpt)

    def step(it: int) -> torch.Tensor:
        if it in STOP_BEFORE:
            raise KeyboardInterrupt
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * ((syn - target) ** 2).sum()
        loss.backward()
        opt.step()
        return loss.detach()

    loop.run(step, report)
    return loop.result(syn.detach(), {"iterations": iterations})


def expected_means(split: dict | None) -> torch.Tensor:
    """The digits classes' mean images, computed here from the data and the set's recorded split."""
    data = load_dataset("digits")
    keep = torch.ones(len(data.train.labels), dtype=torch.bool)
    if split is not None:
        keep[split["val_idx"]] = False
    images = data.normalise(data.train.images)
    return torch.stack([images[(data.train.labels == c) & keep].mean(0) for c in range(data.info.num_classes)])


def test_a_method_registered_in_a_test_module_runs_from_the_cli(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output name goes under ./results
    code, stdout, _ = run_cli(capsys, "condense", "--method", "mean", "--ipc", "2", "--quiet", "--device", "cpu")
    assert code == 0, stdout
    out = Path("results/digits-mean-ipc2-ConvNet-s0.safetensors")  # default_name knows the method too
    assert f"wrote {out}" in stdout and out.with_suffix(".png").exists()

    syn = SyntheticSet.load(out)
    assert syn.meta["method"] == "mean" and syn.meta["toy"] == "mean" and syn.meta["config"]["method"] == "mean"
    assert syn.labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert len(syn.meta["split"]["val_idx"]) > 0  # the default --exclude-split: the means leave the split out
    means = expected_means(syn.meta["split"])
    torch.testing.assert_close(syn.images, means.repeat_interleave(2, dim=0), rtol=0, atol=1e-5)
    assert not torch.allclose(means, expected_means(None), atol=1e-5)  # the split does change them


def test_help_lists_registered_methods_with_their_summaries(capsys):
    with pytest.raises(SystemExit):
        run_cli(capsys, "condense", "--help")
    usage = " ".join(capsys.readouterr().out.split())
    assert "mean: each image is its class's mean real image (a test's toy)" in usage
    assert "dm: Distribution Matching (the paper)" in usage


def pull(*extra: object) -> list[object]:
    return ["condense", "--method", "pull", "--ipc", "1", "--exclude-split", "0", "--quiet", "--device", "cpu", *extra]


def test_a_loop_method_gets_checkpoints_resume_and_its_loss_curve_from_the_shared_loop(capsys, tmp_path, monkeypatch):
    settings = ("--iterations", "6", "--lr-img", "0.5", "--checkpoint-every", "2")
    straight = tmp_path / "straight.safetensors"
    assert run_cli(capsys, *pull(*settings, "--out", straight))[0] == 0
    syn = SyntheticSet.load(straight)
    means = expected_means(None)
    torch.testing.assert_close(syn.images, (1 - 0.5**6) * means, rtol=0, atol=1e-5)
    whole = 0.5 * float((means**2).sum())  # the loss of the zero images
    assert syn.meta["loss_curve"] == pytest.approx([whole * 0.25**k for k in range(6)], rel=1e-5)
    assert syn.meta["iterations"] == 6 and syn.meta["condense_seconds"] >= 0

    cut = tmp_path / "cut.safetensors"
    monkeypatch.setattr(sys.modules[__name__], "STOP_BEFORE", {3})  # Ctrl-C during iteration 4 of 6
    code, _, err = run_cli(capsys, *pull(*settings, "--out", cut))
    assert code == 130 and "--resume" in err
    assert not cut.exists()
    cfg = CondenseConfig(method="pull", ipc=1, val_fraction=0.0, iterations=6, lr_img=0.5, checkpoint_every=2)
    saved = Checkpoint(checkpoint_path(cut), cfg).load()  # refuses a checkpoint of other settings
    assert saved is not None and saved[0] == 3  # the cut iteration is not in the checkpoint: it is redone

    monkeypatch.setattr(sys.modules[__name__], "STOP_BEFORE", set())
    assert run_cli(capsys, *pull(*settings, "--out", cut, "--resume"))[0] == 0
    resumed = SyntheticSet.load(cut)
    assert torch.equal(resumed.images, syn.images)
    assert resumed.meta["loss_curve"] == syn.meta["loss_curve"]
    assert not checkpoint_path(cut).exists()


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--factor", "2"], ["--factor applies to --method dm or m3d only (got --method mean); drop --factor"]),
        (["--mmd-kernel", "linear"], ["--mmd-kernel applies to --method m3d only (got --method mean)"]),
        (
            ["--workers", "2"],
            ["--method mean cannot be split into class shards", "one of: dm, herding, kcenter, m3d, random"],
        ),
    ],
)
def test_a_method_gets_only_the_settings_its_traits_allow(capsys, tmp_path, extra, fragments):
    out = tmp_path / "p.safetensors"
    code, _, err = run_cli(capsys, "condense", "--method", "mean", *extra, "--quiet", "--device", "cpu", "--out", out)
    assert code == 2
    assert_one_line_error(err, *fragments)
    assert not list(tmp_path.iterdir())


def names_a_method(node: ast.AST) -> bool:
    """A comparison of some ``x.method`` with anything but the registry (``cfg.method in CONDENSERS``):
    a trait looked up by the method's name."""
    if not isinstance(node, ast.Compare):
        return False
    operands = [node.left, *node.comparators]
    registry = any(isinstance(o, ast.Name) and o.id == "CONDENSERS" for o in operands)
    return not registry and any(isinstance(o, ast.Attribute) and o.attr == "method" for o in operands)


def test_no_module_tests_a_method_by_its_name():
    package = Path(__file__).parents[1] / "proxynas"
    found = [
        f"{path.relative_to(package.parent)}:{node.lineno}"
        for path in sorted(package.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if names_a_method(node)
    ]
    assert found == [], "look the trait up on CONDENSERS.get(cfg.method) instead"
    # the check sees the comparisons it forbids
    assert names_a_method(ast.parse('cfg.method in {"dm", "m3d"}', mode="eval").body)
    assert names_a_method(ast.parse('"dsa" != self.method', mode="eval").body)
    assert names_a_method(ast.parse("cfg.method not in SHARDABLE", mode="eval").body)
    assert not names_a_method(ast.parse("cfg.method in CONDENSERS", mode="eval").body)
