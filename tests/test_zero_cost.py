"""Zero-cost proxies against hand-computed values on tiny networks, and their registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from proxynas.core.networks import build
from proxynas.core.train import TrainConfig
from proxynas.core.zero_cost import ZERO_COST, grad_norm, naswot, synflow, zico
from proxynas.exceptions import UnknownNameError, UsageError
from proxynas.runtime.seeding import derive_seed, generator
from tests.conftest import TINY_MODEL, make_dataset


def _linear(weight: list[list[float]], bias: list[float] | None = None) -> nn.Linear:
    w = torch.tensor(weight)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias))
    return layer


def _naswot_layer() -> nn.Linear:
    return _linear([[1.0], [1.0], [-1.0]], [0.0, 2.0, 0.0])  # pre-activations (x, x + 2, -x)


# x = 1, -1, -3 -> pre-activations (1, 3, -1), (-1, 1, 1), (-3, -1, 3)
# -> codes a = 110, b = 011, c = 001; K = 3 - Hamming = [[3, 1, 0], [1, 3, 2], [0, 2, 3]]
# det K = 3 * (9 - 4) - 1 * (3 - 0) = 12
X3 = torch.tensor([[1.0], [-1.0], [-3.0]])


def test_naswot_matches_hand_computed_kernel():
    assert naswot(nn.Sequential(_naswot_layer(), nn.ReLU()), X3) == pytest.approx(math.log(12))
    # two images: K = [[3, 1], [1, 3]], det 8
    assert naswot(nn.Sequential(_naswot_layer(), nn.ReLU()), X3[:2]) == pytest.approx(math.log(8))


def test_naswot_codes_are_the_sign_pattern_for_every_activation():
    for act in (nn.Sigmoid(), nn.LeakyReLU(0.01)):
        assert naswot(nn.Sequential(_naswot_layer(), act), X3) == pytest.approx(math.log(12))


def test_naswot_concatenates_the_codes_of_all_activation_layers():
    # the second ReLU sees the first one's output, whose positive units are the same code,
    # so K doubles: det(2K) = 8 * 12 for the 3x3 kernel
    net = nn.Sequential(_naswot_layer(), nn.ReLU(), nn.ReLU())
    assert naswot(net, X3) == pytest.approx(math.log(96))


def test_naswot_of_identical_codes_is_minus_infinity():
    net = nn.Sequential(_naswot_layer(), nn.ReLU())
    assert naswot(net, torch.tensor([[1.0], [2.0]])) == -math.inf  # both codes 110: K singular


def test_naswot_refuses_a_network_without_activation_modules():
    with pytest.raises(UsageError, match="naswot needs activation modules"):
        naswot(nn.Sequential(nn.Linear(1, 2)), X3)


def _synflow_net(bias: bool, norm: bool = False) -> nn.Sequential:
    first = _linear([[1.0, -2.0, 3.0], [-1.0, 0.0, 2.0]], [1.0, 1.0] if bias else None)
    middle = [nn.BatchNorm1d(2)] if norm else []
    return nn.Sequential(first, *middle, nn.ReLU(), _linear([[2.0, -1.0]]))


def test_synflow_matches_hand_computed_flow():
    # |W1| 1 = (6, 3); R = |W2| (6, 3) = 2*6 + 1*3 = 15. Layer 2: sum |w2_j| h_j = 15;
    # layer 1: sum |w1_ji| |w2_j| = 6*2 + 3*1 = 15 -> 30
    assert synflow(_synflow_net(bias=False), (3,)) == pytest.approx(30.0)
    # biases |b1| = (1, 1) raise h to (7, 4): layer 2 scores 2*7 + 1*4 = 18, layer 1 still 15;
    # the biases themselves are not scored (zero-cost-nas scores conv/linear weights only)
    assert synflow(_synflow_net(bias=True), (3,)) == pytest.approx(33.0)


def test_synflow_removes_batchnorm_and_leaves_the_network_alone():
    net = _synflow_net(bias=False, norm=True)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert synflow(net, (3,)) == pytest.approx(30.0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None and p.dtype == torch.float32 for p in net.parameters())


def test_grad_norm_matches_closed_form_softmax_gradient():
    x, y = torch.tensor([[1.0, 2.0], [3.0, -1.0]]), torch.tensor([0, 2])
    # W = 0, b = 0: p = 1/3 each; G = (p - onehot(y))^T x / 2 = [[1/6, -5/6], [2/3, 1/6], [-5/6, 2/3]]
    # ||G||^2 = (1 + 25 + 16 + 1 + 25 + 16) / 36 = 7/3
    assert grad_norm(_linear([[0.0, 0.0]] * 3, [0.0] * 3), x, y) == pytest.approx(math.sqrt(7 / 3))
    g = torch.Generator().manual_seed(1)
    layer = _linear(torch.randn(4, 5, generator=g).tolist(), torch.randn(4, generator=g).tolist())
    x, y = torch.randn(6, 5, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])
    p = torch.softmax(x @ layer.weight.detach().T + layer.bias.detach(), dim=1)
    closed = (p - nn.functional.one_hot(y, 4)).T @ x / len(x)  # d mean-CE / dW
    assert grad_norm(layer, x, y) == pytest.approx(float(closed.norm()), rel=1e-5)
    assert layer.weight.grad is None


def _two_linear(second: list[list[float]]) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[1].weight.copy_(torch.tensor(second))
    return net


def test_zico_matches_hand_computed_gradient_statistics():
    # W1 = I, W2 = [[1, 0], [0, 0]]; batches x = (1, 1) and (1, 3), both of class 0. Logits (1, 0) either way,
    # so p - e_0 = (-t, t) with t = 1 - softmax(1, 0)_0. Gradients: W2: (p - e) x^T; W1: (W2^T (p - e)) x^T.
    # W2: batch 1 [[-t, -t], [t, t]], batch 2 [[-t, -3t], [t, 3t]]: the first column has std 0 (left out);
    #     the second: mean |g| 2t over std t, twice: the layer gives log(2 + 2) = log 4.
    # W1: batch 1 [[-t, -t], [0, 0]], batch 2 [[-t, -3t], [0, 0]]: only (0, 1) varies: log 2.
    x, y = torch.tensor([[1.0, 1.0], [1.0, 3.0]]), torch.tensor([0, 0])
    net = _two_linear([[1.0, 0.0], [0.0, 0.0]])
    assert zico(net, x, y) == pytest.approx(math.log(4) + math.log(2), rel=1e-6)
    assert net[0].weight.grad is None and net[1].weight.grad is None  # scored on a copy
    # W2 = 0: W1's gradient is zero on every batch, so no weight of it varies and the layer is left out
    assert zico(_two_linear([[0.0, 0.0], [0.0, 0.0]]), x, y) == pytest.approx(math.log(4), rel=1e-6)


def test_zico_batches_are_scored_from_zero_not_accumulated():
    # three batches with the same image: every per-batch gradient is equal, so nothing varies (score 0);
    # accumulated gradients (g, 2g, 3g) would vary
    x, y = torch.tensor([[1.0, 3.0]] * 3), torch.tensor([0] * 3)
    assert zico(_two_linear([[1.0, 0.0], [0.0, 0.0]]), x, y, batches=3) == 0


def test_zico_needs_two_batches():
    with pytest.raises(UsageError, match="zico needs 2 batches.*got 1 \\(raise --batch-size\\)"):
        zico(_two_linear([[1.0, 0.0], [0.0, 0.0]]), torch.ones(1, 2), torch.tensor([0]))


def test_params_and_flops_are_the_networks_size_and_cost():
    net = build("d1-w8-relu-instancenorm-avg", 3, 10, 32, seed=0)
    x, y = torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)
    # conv 8 x 3 x 3 x 3 + 8 bias; instancenorm affine 2 x 8; linear (8 x 16 x 16) x 10 + 10
    assert ZERO_COST.get("params")(net, x, y) == 8 * 27 + 8 + 16 + 2048 * 10 + 10
    # 2 x multiply-accumulates: conv 32 x 32 x 8 outputs of 27 each; linear 2048 x 10
    assert ZERO_COST.get("flops")(net, x, y) == 2 * (32 * 32 * 8 * 27 + 2048 * 10)


def test_registry_maps_names_to_the_proxies():
    assert ZERO_COST.names() == ["naswot", "synflow", "grad_norm", "zico", "params", "flops"]
    net, x = nn.Sequential(_naswot_layer(), nn.ReLU(), nn.Linear(3, 2)), X3
    y = torch.tensor([0, 1, 1])
    assert ZERO_COST.get("naswot")(net, x, y) == naswot(net, x)
    assert ZERO_COST.get("synflow")(net, x, y) == synflow(net, (1,))
    assert ZERO_COST.get("grad_norm")(net, x, y) == grad_norm(net, x, y)
    assert ZERO_COST.get("zico")(net, x, y) == zico(net, x, y)
    with pytest.raises(UnknownNameError, match="naswot, synflow, grad_norm"):
        ZERO_COST.get("snip")


def test_scores_are_deterministic_for_a_seeded_build():
    data = make_dataset(size=16)
    x, y = data.normalise(data.train.images[::6]), data.train.labels[::6]

    def scores(seed: int) -> list[float]:
        net = build(TINY_MODEL, 3, 3, 16, seed=seed)
        return [ZERO_COST.get(name)(net, x, y) for name in ZERO_COST.names()]

    first = scores(0)
    assert all(math.isfinite(s) for s in first)
    assert scores(0) == first
    assert scores(1)[1:] != first[1:]  # synflow and grad_norm depend on the weights


def test_zero_cost_study_scores_each_configuration_as_built_for_the_search(tmp_path, space_file):
    import optuna

    from proxynas.analysis.report import build_report
    from proxynas.core.data import load_dataset, train_val_split
    from proxynas.nas.search import SearchConfig, run_search

    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    for metric in ("naswot", "synflow"):
        cfg = SearchConfig(
            study=metric,
            zero_cost=metric,
            zero_cost_batch=10,
            dataset="digits",
            seed=3,
            storage=storage,
            space=str(space_file),
            device="cpu",
        )
        assert run_search(cfg) == 4
    study = optuna.load_study(study_name="synflow", storage=storage)
    assert study.user_attrs["kind"] == "zero-cost" and study.user_attrs["minibatch"] == 10
    trial = study.trials[0]
    cfg_id = trial.user_attrs["config_id"]
    net = build(cfg_id, 1, 10, 32, seed=derive_seed(3, "candidate", cfg_id))
    assert trial.value == pytest.approx(synflow(net, (1, 32, 32))) and trial.user_attrs["score"] == trial.value
    # the minibatch comes from the training split, never the validation split
    data = load_dataset("digits")
    split = train_val_split(data.train.labels, 0.1, 0)
    pick = torch.randperm(len(split.train_idx), generator=generator(3, "zero-cost-batch"))[:10]
    x = data.normalise(data.train.images[split.train_idx][pick])
    naswot_trial = optuna.load_study(study_name="naswot", storage=storage).trials[0]
    net = build(
        naswot_trial.user_attrs["config_id"],
        1,
        10,
        32,
        seed=derive_seed(3, "candidate", naswot_trial.user_attrs["config_id"]),
    )
    assert naswot_trial.value == pytest.approx(naswot(net, x))
    # a zero-cost study is a report row like any other method
    run_search(
        SearchConfig(
            study="whole",
            baseline="whole",
            dataset="digits",
            storage=storage,
            space=str(space_file),
            device="cpu",
            train=TrainConfig(epochs=1, batch_size=250),
            repeats=1,
        )
    )
    report = build_report(storage, [], "whole", extra=["naswot", "synflow"], top=2, k=2)
    rows = report.summary.set_index("method")
    assert set(rows.index) == {"naswot", "synflow"}  # compared with whole; no whole-against-whole row
    assert rows.loc["naswot", "n_shared"] == 4 and rows.loc["synflow", "n_top"] == 2

    with pytest.raises(UsageError, match=r"--batch-size 100000 must be in 1\.\.\d+ \(the training split's size\)"):
        run_search(
            SearchConfig(
                study="big",
                zero_cost="naswot",
                zero_cost_batch=100_000,
                dataset="digits",
                storage=storage,
                space=str(space_file),
                device="cpu",
            )
        )


def test_score_params_and_flops_studies_rank_by_the_recorded_size_and_cost(tmp_path, capsys, space_file):
    import optuna

    from proxynas.cli import main

    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    argv = [
        "score",
        "--metrics",
        "params,flops",
        "--dataset",
        "digits",
        "--storage",
        storage,
        "--space",
        str(space_file),
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(argv) == 0
    for metric in ("params", "flops"):
        study = optuna.load_study(study_name=metric, storage=storage)
        assert study.user_attrs["method"] == metric and study.user_attrs["command"] == "proxynas " + " ".join(argv)
        assert len(study.trials) == 4
        for t in study.trials:
            assert t.value == t.user_attrs[metric]  # what every study records of a configuration
