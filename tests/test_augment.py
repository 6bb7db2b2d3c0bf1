"""DSA: per-op maths, Siamese sharing, independence across groups, determinism, gradients."""

from __future__ import annotations

import pytest
import torch

from proxynas.core import augment as A
from proxynas.exceptions import UnknownNameError, UsageError

FAMILY_NAMES = list(A.FAMILIES)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 8, c: int = 3, h: int = 8, w: int = 8, seed: int = 1, dtype=torch.float32):
    return torch.randn(n, c, h, w, generator=gen(seed), dtype=dtype)


# --- strategy parsing ---------------------------------------------------------------------


def test_parse_default_strategy_lists_all_six_families():
    assert A.parse_strategy(A.DEFAULT_STRATEGY) == ("color", "crop", "cutout", "flip", "scale", "rotate")
    assert A.parse_strategy("color_crop_cutout_scale_rotate") == ("color", "crop", "cutout", "scale", "rotate")
    assert A.parse_strategy(["flip", "crop"]) == ("flip", "crop")


@pytest.mark.parametrize("strategy", ["", "none", "None", " none "])
def test_parse_empty_strategy_is_identity(strategy):
    assert A.parse_strategy(strategy) == ()


def test_parse_unknown_family_lists_known_ones():
    with pytest.raises(UnknownNameError, match=r"'blur'.*color, crop, cutout, flip, scale, rotate"):
        A.parse_strategy("color_blur")


def test_parse_repeated_family_is_a_usage_error():
    with pytest.raises(UsageError, match="repeats"):
        A.parse_strategy("crop_crop")


def test_identity_strategy_returns_input_and_draws_nothing():
    x, g = images(), gen()
    state = g.get_state()
    assert A.augment(x, "none", g) is x
    assert torch.equal(g.get_state(), state)


# --- per-op maths: neutral parameters and hand-checked values ---------------------------------


def test_neutral_parameters_are_identity():
    x = images()
    n = x.shape[0]
    zeros, ones = torch.zeros(n), torch.ones(n)
    assert torch.equal(A.brightness(x, zeros), x)
    torch.testing.assert_close(A.saturation(x, ones), x)
    torch.testing.assert_close(A.contrast(x, ones), x)
    torch.testing.assert_close(A.color(x, torch.tensor([[0.0, 1.0, 1.0]]).expand(n, 3)), x)
    assert torch.equal(A.crop(x, torch.zeros(n, 2, dtype=torch.long)), x)
    assert torch.equal(A.cutout(x, torch.full((n, 2), 4), size=(0, 0)), x)
    assert torch.equal(A.flip(x, torch.zeros(n, dtype=torch.bool)), x)
    torch.testing.assert_close(A.scale(x, torch.ones(n, 2)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(A.rotate(x, zeros), x, atol=1e-5, rtol=0)


def test_brightness_adds_offset_per_image():
    x = images(n=2)
    out = A.brightness(x, torch.tensor([0.2, -0.3]))
    torch.testing.assert_close(out[0], x[0] + 0.2)
    torch.testing.assert_close(out[1], x[1] - 0.3)


def test_saturation_scales_distance_to_channel_mean():
    x = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)  # one pixel, channel mean 2
    torch.testing.assert_close(A.saturation(x, torch.tensor([2.0])).flatten(), torch.tensor([0.0, 4.0]))
    torch.testing.assert_close(A.saturation(x, torch.tensor([0.0])).flatten(), torch.tensor([2.0, 2.0]))


def test_contrast_scales_distance_to_image_mean():
    x = torch.tensor([0.0, 1.0, 2.0, 5.0]).view(1, 1, 2, 2)  # image mean 2
    out = A.contrast(x, torch.tensor([0.5]))
    torch.testing.assert_close(out.flatten(), torch.tensor([1.0, 1.5, 2.0, 3.5]))


def test_color_applies_brightness_then_saturation_then_contrast():
    x = images(n=3)
    p = torch.tensor([[0.1, 0.5, 1.3], [-0.4, 1.7, 0.6], [0.0, 0.0, 1.5]])
    expected = A.contrast(A.saturation(A.brightness(x, p[:, 0]), p[:, 1]), p[:, 2])
    torch.testing.assert_close(A.color(x, p), expected)


def test_flip_reverses_width_only_where_asked():
    x = images(n=2)
    out = A.flip(x, torch.tensor([True, False]))
    assert torch.equal(out[0], x[0].flip(-1))
    assert torch.equal(out[1], x[1])


def test_crop_shifts_by_whole_pixels_with_zero_fill():
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    down = A.crop(x, torch.tensor([[1, 0]]))  # out[i, j] = x[i + 1, j]
    assert torch.equal(down[0, 0, :3], x[0, 0, 1:])
    assert torch.equal(down[0, 0, 3], torch.zeros(4))
    right = A.crop(x, torch.tensor([[0, -1]]))  # out[i, j] = x[i, j - 1]
    assert torch.equal(right[0, 0, :, 1:], x[0, 0, :, :3])
    assert torch.equal(right[0, 0, :, 0], torch.zeros(4))
    gone = A.crop(x, torch.tensor([[5, 0]]))  # shifted past the edge: only padding left
    assert torch.equal(gone, torch.zeros_like(x))


def test_crop_shifts_each_image_by_its_own_amount():
    x = images(n=2, h=6, w=6)
    out = A.crop(x, torch.tensor([[2, -1], [0, 3]]))
    assert torch.equal(out[0, :, :4, 1:], x[0, :, 2:, :5])
    assert torch.equal(out[1, :, :, :3], x[1, :, :, 3:])


def test_cutout_zeroes_exactly_the_expected_square():
    x = torch.ones(2, 3, 8, 8)
    out = A.cutout(x, torch.tensor([[4, 4], [0, 7]]))  # default side: half of 8 = 4
    expected = torch.ones(2, 3, 8, 8)
    expected[0, :, 2:6, 2:6] = 0  # starts at centre - 4 // 2
    expected[1, :, 0:2, 5:8] = 0  # clipped to the image at the corner
    assert torch.equal(out, expected)


def test_scale_axes_follow_affine_grid_convention():
    x = images(n=1)
    # sx acts on width, sy on height; -1 mirrors, which on the pixel grid is exact
    torch.testing.assert_close(A.scale(x, torch.tensor([[-1.0, 1.0]])), x.flip(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(A.scale(x, torch.tensor([[1.0, -1.0]])), x.flip(2), atol=1e-5, rtol=0)


def test_scale_zooms_about_the_centre():
    x = torch.arange(5.0).expand(1, 1, 3, 5)  # every row is 0..4
    # sx = 0.5: output column j reads input position 2 + 0.5 * (j - 2), interpolated
    out = A.scale(x, torch.tensor([[0.5, 1.0]]))
    torch.testing.assert_close(out[0, 0], torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0]).expand(3, 5))


def test_rotate_90_degrees_matches_rot90():
    x = images(n=2, h=7, w=7)
    out = A.rotate(x, torch.tensor([90.0, -90.0]))
    torch.testing.assert_close(out[0], torch.rot90(x[0], 1, (1, 2)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], torch.rot90(x[1], -1, (1, 2)), atol=1e-5, rtol=0)


# --- sampling -------------------------------------------------------------------------------


def test_sampled_parameters_stay_in_the_paper_ranges():
    p = A.sample_params(A.DEFAULT_STRATEGY, 20000, (32, 32), gen())
    assert p.num_groups == 20000
    assert set(p.family.tolist()) == set(range(6))
    b, s, c = p.values["color"].unbind(1)
    assert b.min() >= -0.5 and b.max() <= 0.5
    assert s.min() >= 0.0 and s.max() <= 2.0
    assert c.min() >= 0.5 and c.max() <= 1.5
    assert p.values["crop"].dtype == torch.long
    assert set(p.values["crop"].flatten().tolist()) == set(range(-4, 5))  # int(32 * 0.125 + 0.5) = 4
    # an even cutout side (16) lets the centre reach the far edge, as in the reference
    assert set(p.values["cutout"].flatten().tolist()) == set(range(0, 33))
    assert 0.45 < p.values["flip"].float().mean() < 0.55
    assert p.values["scale"].min() >= 1 / 1.2 and p.values["scale"].max() <= 1.2
    assert p.values["rotate"].abs().max() <= 15.0
    assert p.values["rotate"].shape == (20000,) and p.values["scale"].shape == (20000, 2)


def test_crop_bound_follows_each_side():
    p = A.sample_params("crop", 5000, (8, 24), gen())
    assert set(p.values["crop"][:, 0].tolist()) == set(range(-1, 2))  # int(8 * 0.125 + 0.5) = 1
    assert set(p.values["crop"][:, 1].tolist()) == set(range(-3, 4))


def test_params_move_to_another_device_keeping_dtypes_and_shapes():
    # "meta" stands in for an accelerator: it exercises the packed single copy and the split
    p = A.sample_params(A.DEFAULT_STRATEGY, 5, (8, 8), gen())
    assert p.to("cpu") is p
    moved = p.to("meta")
    assert moved.family.device.type == "meta" and moved.family.dtype == torch.long
    for name, v in p.values.items():
        assert (moved.values[name].shape, moved.values[name].dtype) == (v.shape, v.dtype)


# --- the batched pipeline: every family ---------------------------------------------------------


@pytest.fixture(params=["by_index", "by_mask"])
def merge(request, monkeypatch):
    """Run a test through both ways of merging families: by index (CPU) and by mask (accelerators)."""
    if request.param == "by_mask":
        monkeypatch.setattr(A, "_MERGE", {})
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_each_family_keeps_shape_dtype_device_and_changes_images(name, dtype, merge):
    x = images(n=16, h=8, w=10, dtype=dtype)
    out = A.augment(x, name, gen())
    assert (out.shape, out.dtype, out.device) == (x.shape, x.dtype, x.device)
    assert not torch.equal(out, x)


@pytest.mark.parametrize("name", FAMILY_NAMES + [A.DEFAULT_STRATEGY])
def test_gradients_reach_the_input(name, merge):
    x = images(n=16).requires_grad_(True)
    A.augment(x, name, gen()).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("strategy", FAMILY_NAMES + [A.DEFAULT_STRATEGY])
def test_siamese_real_and_synthetic_of_a_class_get_the_same_transform(strategy, merge):
    real = images(n=12)
    real_groups = torch.arange(3).repeat_interleave(4)  # 3 classes x 4 images
    picks = [9, 3, 6]  # synthetic images: copies of real ones, classes out of order
    syn, syn_groups = real[picks].clone(), real_groups[picks]
    out_real, out_syn = A.siamese([real, syn], [real_groups, syn_groups], strategy, gen(), num_groups=3)
    assert torch.equal(out_syn, out_real[picks])


def test_gradient_is_exact_for_a_mixed_batch(merge):
    # every op is linear in x for fixed parameters, so finite differences match in float64
    x = images(n=12, c=2, h=5, w=6, dtype=torch.float64).requires_grad_(True)
    params = A.sample_params(A.DEFAULT_STRATEGY, 12, (5, 6), gen(4))
    assert len(set(params.family.tolist())) == 6
    assert torch.autograd.gradcheck(lambda t: A.apply(t, params, torch.arange(12)), (x,), fast_mode=True)


def test_empty_batch_passes_through(merge):
    x = torch.zeros(0, 3, 8, 8)
    assert A.augment(x, A.DEFAULT_STRATEGY, gen()).shape == (0, 3, 8, 8)
    groups = [torch.zeros(4, dtype=torch.long), torch.zeros(0, dtype=torch.long)]
    real, syn = A.siamese([images(n=4), x], groups, A.DEFAULT_STRATEGY, gen(), num_groups=1)
    assert real.shape == (4, 3, 8, 8) and syn.shape == (0, 3, 8, 8)


def test_same_image_within_a_group_gets_the_same_transform(merge):
    x = images(n=1).expand(12, -1, -1, -1).contiguous()
    groups = torch.arange(4).repeat_interleave(3)
    out = A.augment(x, A.DEFAULT_STRATEGY, gen(3), groups)
    for k in range(0, 12, 3):
        assert torch.equal(out[k], out[k + 1]) and torch.equal(out[k], out[k + 2])


def test_groups_draw_independent_parameters():
    p = A.sample_params(A.DEFAULT_STRATEGY, 50, (8, 8), gen())
    assert len(set(p.family.tolist())) > 1
    for name, v in p.values.items():
        assert len(torch.unique(v.float(), dim=0)) > 1, name


@pytest.mark.parametrize("strategy", ["rotate", "scale", "color", A.DEFAULT_STRATEGY])
def test_identical_images_in_different_groups_come_out_different(strategy):
    x = images(n=1).expand(20, -1, -1, -1).contiguous()
    out = A.augment(x, strategy, gen(), torch.arange(20))
    assert len(torch.unique(out.flatten(1), dim=0)) > 10


def test_no_groups_means_independent_draws_per_image():
    x = images(n=1).expand(20, -1, -1, -1).contiguous()
    out = A.augment(x, "rotate", gen())
    assert len(torch.unique(out.flatten(1), dim=0)) == 20


def test_each_image_gets_only_its_groups_family(merge):
    x = images(n=6)
    params = A.sample_params(A.DEFAULT_STRATEGY, 6, (8, 8), gen(5))
    groups = torch.tensor([5, 4, 3, 2, 1, 0])
    out = A.apply(x, params, groups)
    for i, g in enumerate(groups.tolist()):
        name = params.strategy[params.family[g]]
        expected = A.FAMILIES[name].apply(x[i : i + 1], params.values[name][g : g + 1])
        assert torch.equal(out[i : i + 1], expected), name


# --- determinism and RNG hygiene -------------------------------------------------------------


def test_same_seed_same_output_and_different_seed_different_output(merge):
    x = images(n=32)
    first = A.augment(x, A.DEFAULT_STRATEGY, gen(7))
    assert torch.equal(first, A.augment(x, A.DEFAULT_STRATEGY, gen(7)))
    assert not torch.equal(first, A.augment(x, A.DEFAULT_STRATEGY, gen(8)))


def test_global_rng_is_untouched():
    before = torch.random.get_rng_state()
    A.augment(images(n=32), A.DEFAULT_STRATEGY, gen())
    groups = [torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1])]
    A.siamese([images(n=4), images(n=2)], groups, A.DEFAULT_STRATEGY, gen())
    assert torch.equal(torch.random.get_rng_state(), before)


def test_num_groups_is_inferred_from_groups():
    g1, g2 = gen(2), gen(2)
    groups = torch.tensor([0, 2, 2])
    x = images(n=3)
    inferred = A.augment(x, A.DEFAULT_STRATEGY, g1, groups)
    assert torch.equal(inferred, A.augment(x, A.DEFAULT_STRATEGY, g2, groups, num_groups=3))


# --- errors -------------------------------------------------------------------------------------


def test_groups_must_match_the_batch():
    with pytest.raises(UsageError, match="one group index per image"):
        A.augment(images(n=4), "crop", gen(), torch.zeros(3, dtype=torch.long), num_groups=1)


def test_integer_images_are_rejected():
    with pytest.raises(UsageError, match="float"):
        A.augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "crop", gen())


def test_siamese_batches_must_share_image_size():
    with pytest.raises(UsageError, match="image size"):
        A.siamese([images(h=8), images(h=6)], None, "crop", gen())


def test_siamese_needs_one_group_tensor_per_batch():
    with pytest.raises(UsageError, match="one per batch"):
        A.siamese([images(), images()], [torch.zeros(8, dtype=torch.long)], "crop", gen())


# --- one family per call (the reference's DiffAugment on a training batch) ------------------------


def test_one_family_per_call_applies_a_single_op_with_per_image_parameters():
    x = images(n=16)
    params = A.sample_params(A.DEFAULT_STRATEGY, 16, (8, 8), gen(3), family_per="call")
    (name,) = params.strategy
    assert params.values.keys() == {name} and torch.equal(params.family, torch.zeros(16, dtype=torch.long))
    out = A.apply(x, params, torch.arange(16))
    assert torch.equal(out, A.FAMILIES[name].apply(x, params.values[name]))
    assert A.augment(x, A.DEFAULT_STRATEGY, gen(3), family_per="call").equal(out)


def test_one_family_per_call_draws_every_family_across_calls():
    g = gen(0)
    drawn = {A.sample_params(A.DEFAULT_STRATEGY, 4, (8, 8), g, family_per="call").strategy[0] for _ in range(200)}
    assert drawn == set(A.FAMILIES)


def test_one_family_per_call_uses_the_host_generator_for_the_family():
    params = [
        A.sample_params(A.DEFAULT_STRATEGY, 4, (8, 8), gen(s), family_per="call", host_generator=gen(9))
        for s in range(20)
    ]
    assert len({p.strategy for p in params}) == 1  # the family follows host_generator only
    assert len({tuple(p.values[p.strategy[0]].flatten().tolist()) for p in params}) > 1


def test_a_single_family_needs_no_merge_and_gives_what_the_merge_gave(merge):
    x = images(n=12)
    full = A.sample_params(A.DEFAULT_STRATEGY, 12, (8, 8), gen(2))
    for code, name in enumerate(full.strategy):
        forced = A.DSAParams(full.strategy, torch.full((12,), code), full.values)  # every image: this family
        alone = A.DSAParams((name,), torch.zeros(12, dtype=torch.long), {name: full.values[name]})
        assert torch.equal(A.apply(x, forced, torch.arange(12)), A.apply(x, alone, torch.arange(12))), name


def test_unknown_family_per_is_rejected():
    with pytest.raises(UnknownNameError, match="group, call"):
        A.sample_params("crop", 4, (8, 8), gen(), family_per="class")
