"""Tests for proxynas.core.networks: shapes, hand-computed sizes and FLOPs, ids, seeding."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from proxynas.core.networks import (
    NETWORKS,
    ConvNet,
    NetConfig,
    build,
    count_flops,
    count_params,
    default_depth,
    describe,
    uses_batch_stats,
)
from proxynas.exceptions import UnknownNameError, UsageError

SHAPES = [(1, 28), (3, 32), (3, 64)]  # (channels, image_size)

DEPTHS, WIDTHS = (1, 2, 3, 4), (32, 64, 128, 256)
ACTS = ("sigmoid", "relu", "leakyrelu")
NORMS = ("none", "batchnorm", "layernorm", "instancenorm", "groupnorm")
POOLS = ("none", "max", "avg")
SPACE = [NetConfig(*c) for c in itertools.product(DEPTHS, WIDTHS, ACTS, NORMS, POOLS)]


# The paper's named ConvNet variants: each is the default ConvNet (depth 3 below 64x64, 4 from
# 64x64 up) with the one change its name spells
CONVNET_VARIANTS = {
    "ConvNet": {},
    **{f"ConvNetD{d}": {"depth": d} for d in (1, 2, 3, 4)},
    **{f"ConvNetW{w}": {"width": w} for w in (32, 64, 128, 256)},
    "ConvNetAS": {"act": "sigmoid"},
    "ConvNetAR": {"act": "relu"},
    "ConvNetAL": {"act": "leakyrelu"},
    "ConvNetNN": {"norm": "none"},
    "ConvNetBN": {"norm": "batchnorm"},
    "ConvNetLN": {"norm": "layernorm"},
    "ConvNetIN": {"norm": "instancenorm"},
    "ConvNetGN": {"norm": "groupnorm"},
    "ConvNetNP": {"pool": "none"},
    "ConvNetMP": {"pool": "max"},
    "ConvNetAP": {"pool": "avg"},
}
# The cross-architecture models: name -> (convolutions, BatchNorm layers). ResNet-18: a stem, 8
# blocks of 2 and 3 projection shortcuts; "BN" names a BatchNorm after every convolution
FIXED = {
    "MLP": (0, 0),
    "LeNet": (2, 0),
    "AlexNet": (5, 0),
    "AlexNetBN": (5, 5),
    "VGG11": (8, 0),
    "VGG11BN": (8, 8),
    "ResNet18": (20, 0),
    "ResNet18BN": (20, 20),
    "ResNet18_AP": (20, 0),
    "ResNet18BN_AP": (20, 20),
}


def test_every_registered_name_has_an_expected_architecture():
    assert sorted(NETWORKS.names()) == sorted([*CONVNET_VARIANTS, *FIXED])


@pytest.mark.parametrize("name", CONVNET_VARIANTS)
@pytest.mark.parametrize("size,depth", [(32, 3), (64, 4)])
def test_each_convnet_variant_builds_the_default_convnet_with_its_one_change(name, size, depth):
    model = build(name, 3, 10, size)
    assert type(model) is ConvNet
    assert model.cfg == NetConfig(**{"depth": depth, **CONVNET_VARIANTS[name]})
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == model.cfg.depth and {c.out_channels for c in convs} == {model.cfg.width}


@pytest.mark.parametrize("name", FIXED)
def test_each_fixed_architecture_builds_its_layers(name):
    model = build(name, 3, 10, 32)
    assert type(model) is not ConvNet and model.name == name
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert (convs, batch_norms) == FIXED[name]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# VGG-11 and ResNet-18 forward+backward at 64x64 take seconds on a CPU: slow-marked,
# their 64x64 shapes are still checked in test_feature_sizes_at_64
_HEAVY = {"VGG11", "VGG11BN", "ResNet18", "ResNet18BN", "ResNet18_AP", "ResNet18BN_AP"}
FORWARD_CASES = [
    pytest.param(name, c, s, marks=[pytest.mark.slow] if s == 64 and name in _HEAVY else [])
    for name in NETWORKS.names()
    for c, s in SHAPES
]


@pytest.mark.parametrize("name,channels,size", FORWARD_CASES)
def test_every_network_forward_backward(name, channels, size):
    model = build(name, channels, 3, size, seed=0)
    x = torch.randn(2, channels, size, size, requires_grad=True)
    emb = model.embed(x)
    out = model(x)
    assert emb.shape == (2, model.classifier.in_features)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, model.classifier(emb))  # forward == classifier(embed)
    out.square().sum().backward()
    # DM and gradient matching need gradients on the input pixels and every weight
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def _expected_params(cfg: NetConfig, channels: int, size: int, num_classes: int) -> int:
    """Closed form for ConvNet parameters, independent of the module code."""
    side = 32 if size == 28 else size  # 28x28 gets padding 3 on the first conv
    total, cin = 0, channels
    for _ in range(cfg.depth):
        total += cin * cfg.width * 9 + cfg.width  # 3x3 conv + bias
        norm = {"none": 0, "layernorm": 2 * cfg.width * side * side}.get(cfg.norm, 2 * cfg.width)
        total += norm
        side //= 1 if cfg.pool == "none" else 2
        cin = cfg.width
    return total + cfg.width * side * side * num_classes + num_classes


def test_search_space_builds_with_closed_form_param_counts():
    assert len(SPACE) == 720
    for cfg, (channels, size) in itertools.product(SPACE, [(3, 32), (1, 28)]):
        with torch.device("meta"):  # shapes only: skips 1,440 weight inits
            model = ConvNet(cfg, channels, 2, size)
        assert count_params(model) == _expected_params(cfg, channels, size, 2), (cfg.id, size)
    for cfg in SPACE[::89]:  # really run a spread of them
        for channels, size in [(3, 32), (1, 28)]:
            assert build(cfg, channels, 2, size)(torch.randn(2, channels, size, size)).shape == (2, 2)


@pytest.mark.parametrize(
    "name,features",
    [
        ("VGG11", 512 * 2 * 2),  # five 2x2 pools: 64 -> 2
        ("ResNet18BN", 512),  # global average pool
        ("ResNet18BN_AP", 512 * 8 * 8),  # three 2x2 average pools: 64 -> 8
        ("AlexNet", 192 * 8 * 8),  # three 2x2 max pools
        ("MLP", 128),
    ],
)
def test_feature_sizes_at_64(name, features):
    assert build(name, 3, 10, 64).classifier.in_features == features


@pytest.mark.parametrize(
    "arch,channels,size,expected",
    [
        # conv 3*32*9+32 = 896; 16x16 map -> linear 32*16*16*10+10 = 81930
        ("d1-w32-relu-none-avg", 3, 32, 896 + 81930),
        # instance norm adds weight+bias per channel: 2*32
        ("d1-w32-relu-instancenorm-avg", 3, 32, 896 + 64 + 81930),
        # layernorm over the 32x32x32 conv output (before pooling): 2*32*32*32 = 65536
        ("d1-w32-relu-layernorm-avg", 3, 32, 896 + 65536 + 81930),
        # no pooling: conv 896, LN 65536, conv 32*32*9+32 = 9248, LN 65536, linear 32*32*32*10+10
        ("d2-w32-relu-layernorm-none", 3, 32, 896 + 65536 + 9248 + 65536 + 327690),
        # 1x28x28, padding 3 -> 32x32 maps: conv 1*32*9+32 = 320, linear as at 32x32 (not 14x14)
        ("d1-w32-relu-none-avg", 1, 28, 320 + 81930),
        # default ConvNet: 3584 + 256 + 2*(147584 + 256) + 128*4*4*10+10
        ("ConvNet", 3, 32, 3584 + 256 + 2 * (147584 + 256) + 20490),
        # 64x64: depth 4, still a 4x4 final map
        ("ConvNet", 3, 64, 3584 + 256 + 3 * (147584 + 256) + 20490),
        # AlexNet convs: 3*128*25+128, 128*192*25+192, 192*256*9+256, 256*192*9+192,
        # 192*192*9+192; fc 192*4*4*10+10
        ("AlexNet", 3, 32, 9728 + 614592 + 442624 + 442560 + 331968 + 30730),
        # LeNet: 3*6*25+6, 6*16*25+16, 400*120+120, 120*84+84, 84*10+10
        ("LeNet", 3, 32, 456 + 2416 + 48120 + 10164 + 850),
        ("LeNet", 1, 28, 156 + 2416 + 48120 + 10164 + 850),  # LeNet-5's 61,706
        # MLP: 3072*128+128, 128*128+128, 128*10+10
        ("MLP", 3, 32, 393344 + 16512 + 1290),
        ("ResNet18BN", 3, 32, 11_173_962),  # the usual CIFAR ResNet-18 count
        ("ResNet18", 3, 32, 11_173_962),  # GroupNorm(C, C) has BatchNorm's 2C parameters
        ("ResNet18BN_AP", 3, 32, 11_173_962 - 5130 + 81930),  # classifier sees 512*4*4
    ],
)
def test_param_counts_by_hand(arch, channels, size, expected):
    assert count_params(build(arch, channels, 10, size)) == expected


def test_flops_by_hand():
    # conv: 2 * (32 out * 32*32 positions) * (3 in * 9) = 1,769,472; linear: 2 * 8192 * 10 = 163,840
    assert count_flops("d1-w32-relu-none-avg", 3, 32) == 1_769_472 + 163_840
    assert describe("d1-w32-relu-none-avg", 3, 10, 32) == {"params": 82826, "flops": 1_933_312}


def test_count_flops_leaves_the_model_alone():
    model = build("ConvNetBN", 3, 10, 32, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert count_flops(model, 3, 32) > 0
    assert model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_layers_follow_protocol():
    ln = build("ConvNetLN", 3, 10, 32)
    assert [m.normalized_shape for m in ln.modules() if isinstance(m, nn.LayerNorm)] == [
        (128, 32, 32), (128, 16, 16), (128, 8, 8),
    ]  # fmt: skip
    inorm = [m for m in build("ConvNet", 3, 10, 32).modules() if isinstance(m, nn.GroupNorm)]
    assert [(m.num_groups, m.num_channels, m.affine) for m in inorm] == [(128, 128, True)] * 3
    gn = [m for m in build("ConvNetGN", 3, 10, 32).modules() if isinstance(m, nn.GroupNorm)]
    assert {m.num_groups for m in gn} == {4}
    leaky = [m for m in build("ConvNetAL", 3, 10, 32).modules() if isinstance(m, nn.LeakyReLU)]
    assert [m.negative_slope for m in leaky] == [0.01] * 3
    assert any(isinstance(m, nn.MaxPool2d) for m in build("ConvNetMP", 3, 10, 32).modules())
    for size, padding in [(28, 3), (32, 1)]:
        first = next(m for m in build("ConvNet", 1, 10, size).modules() if isinstance(m, nn.Conv2d))
        assert first.padding == (padding, padding)


def test_resnet_ap_downsamples_by_pooling():
    def strides(name):
        return {m.stride for m in build(name, 3, 10, 32).modules() if isinstance(m, nn.Conv2d)}

    assert strides("ResNet18BN") == {(1, 1), (2, 2)}
    assert strides("ResNet18BN_AP") == {(1, 1)}
    assert build("ResNet18BN_AP", 3, 10, 32).classifier.in_features == 512 * 4 * 4


def test_default_depth_applies_only_where_the_variant_leaves_it():
    assert default_depth(32) == default_depth(28) == 3
    assert default_depth(64) == 4
    assert build("ConvNet", 3, 10, 64).cfg.depth == 4
    assert build("ConvNetW32", 3, 10, 64).cfg == NetConfig(depth=4, width=32)
    assert build("ConvNetD3", 3, 10, 64).cfg.depth == 3
    assert build("ConvNetBN", 3, 10, 32).cfg == NetConfig(norm="batchnorm")


def test_id_round_trip_and_build_by_id():
    assert NetConfig().id == "d3-w128-relu-instancenorm-avg"
    assert all(NetConfig.from_id(cfg.id) == cfg for cfg in SPACE)
    by_id = build("d2-w64-relu-batchnorm-max", 3, 10, 32, seed=1)
    by_cfg = build(NetConfig(2, 64, "relu", "batchnorm", "max"), 3, 10, 32, seed=1)
    assert isinstance(by_id, ConvNet)
    assert by_id.cfg == by_cfg.cfg
    for (k, a), (_, b) in zip(by_id.state_dict().items(), by_cfg.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"act": "swish"}, "act 'swish' is not one of: sigmoid, relu, leakyrelu"),
        ({"norm": "bn"}, "none, batchnorm, layernorm, instancenorm, groupnorm"),
        ({"pool": "mean"}, "pool 'mean' is not one of: none, max, avg"),
        ({"depth": 0}, "depth must be an integer >= 1"),
        ({"width": "64"}, "width must be an integer >= 1"),
        ({"norm": "groupnorm", "width": 6}, "multiple of 4"),
    ],
)
def test_netconfig_validation(kwargs, match):
    with pytest.raises(UsageError, match=match):
        NetConfig(**kwargs)


def test_bad_ids():
    with pytest.raises(UsageError, match="not a ConvNet id; expected d<depth>-w<width>"):
        NetConfig.from_id("d3-w128-relu")
    with pytest.raises(UsageError, match="act 'swish'"):
        build("d3-w128-swish-none-avg", 3, 10, 32)  # id-shaped: the field error is more useful


def test_unknown_name_lists_choices_and_id_format():
    with pytest.raises(UnknownNameError) as info:
        build("ResNet50", 3, 10, 32)
    message = str(info.value)
    assert "\n" not in message
    assert "'ResNet50'" in message and "ConvNetBN" in message and "ResNet18BN_AP" in message
    assert "d<depth>-w<width>-<act>-<norm>-<pool>" in message


def test_too_deep_for_the_image_is_a_usage_error():
    assert build("d5-w32-relu-none-max", 3, 10, 32).classifier.in_features == 32  # 32 -> 1x1
    assert build("d6-w32-relu-none-none", 3, 10, 32).classifier.in_features == 32 * 32 * 32
    with pytest.raises(UsageError, match="d6-w32-relu-none-max cannot run on 3x32x32 inputs"):
        build("d6-w32-relu-none-max", 3, 10, 32)
    with pytest.raises(UsageError, match="VGG11 cannot run on 3x16x16 inputs"):
        build("VGG11", 3, 10, 16)


def test_seed_gives_identical_weights_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = build("ConvNet", 3, 10, 32, seed=7)
    b = build("ConvNet", 3, 10, 32, seed=7)
    c = build("ConvNet", 3, 10, 32, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), k
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    build("ConvNet", 3, 10, 32)  # seed=None draws from the global generator
    assert not torch.equal(torch.get_rng_state(), state)


def test_uses_batch_stats_by_module_type():
    for name in ["ConvNetBN", "AlexNetBN", "VGG11BN", "ResNet18BN_AP"]:
        assert uses_batch_stats(build(name, 3, 10, 32)), name
    for name in ["ConvNet", "ConvNetGN", "ConvNetLN", "ResNet18", "AlexNet"]:
        assert not uses_batch_stats(build(name, 3, 10, 32)), name
    # names say nothing: a GroupNorm called "bn" is not BatchNorm, a BatchNorm1d called "norm" is
    assert not uses_batch_stats(nn.ModuleDict({"bn": nn.GroupNorm(4, 8)}))
    assert uses_batch_stats(nn.ModuleDict({"norm": nn.BatchNorm1d(8)}))
