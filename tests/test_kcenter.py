"""K-Center coreset: the greedy selection against hand and brute-force checks, and the method end to end."""

from __future__ import annotations

import pytest
import torch

from proxynas.core.condense import CONDENSERS, CondenseConfig, condense
from proxynas.core.condense._kcenter import kcenter
from proxynas.exceptions import UsageError
from tests.conftest import TINY_MODEL, make_dataset


def test_kcenter_on_a_hand_made_line():
    points = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    # mean 4.8: nearest is 2 (index 2); farthest from {2} is 11 (index 4); then 0 (index 0,
    # distance 2); then 1 and 10 tie at distance 1, and the lower index (1) wins
    assert kcenter(points, 2).tolist() == [2, 4]
    assert kcenter(points, 4).tolist() == [2, 4, 0, 1]
    assert kcenter(points, 5).tolist() == [2, 4, 0, 1, 3]


def test_kcenter_selects_what_brute_force_greedy_selects():
    feats = torch.randn(12, 5, generator=torch.Generator().manual_seed(4))
    rows = feats.tolist()

    def dist(a: list[float], b: list[float]) -> float:
        return sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5

    mean = [sum(col) / len(rows) for col in zip(*rows, strict=True)]
    chosen = [min(range(12), key=lambda i: dist(rows[i], mean))]
    for _ in range(5):  # python loop: the point farthest from its nearest chosen centre
        chosen.append(
            max((i for i in range(12) if i not in chosen), key=lambda i: min(dist(rows[i], rows[j]) for j in chosen))
        )
    assert kcenter(feats, 6).tolist() == chosen


def test_kcenter_never_repeats_a_point_among_duplicates():
    assert sorted(kcenter(torch.zeros(4, 2), 4).tolist()) == [0, 1, 2, 3]


def test_kcenter_rejects_k_larger_than_the_pool():
    with pytest.raises(UsageError, match="k=4"):
        kcenter(torch.zeros(3, 2), 4)


def test_kcenter_condenses_real_images_of_each_class(tmp_path):
    tiny = make_dataset()
    assert "kcenter" in CONDENSERS.names()
    syn = condense(
        CondenseConfig(method="kcenter", ipc=3, model=TINY_MODEL),
        tmp_path / "k.safetensors",
        dataset=tiny,
        device="cpu",
    )
    idx = torch.tensor(syn.meta["selected_indices"])  # (classes, ipc)
    assert idx.shape == (3, 3)
    assert all(len(set(row)) == 3 for row in idx.tolist())
    assert (tiny.train.labels[idx] == torch.arange(3)[:, None]).all()
    assert torch.allclose(syn.images, tiny.normalise(tiny.train.images[idx.flatten()]))
    assert syn.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert syn.meta["method"] == "kcenter"
