"""Sampling masks: MRI (fastMRI-style 1D, Poisson disc), inpainting mask makers."""
import os
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from invdiff.operators import (MASK_KINDS, box_mask, brush_mask, default_center_fraction, equispaced_mask,
                               gaussian_mask_1d, half_mask, make_mask, poisson_disc_mask, poisson_disc_mask_1d, random_mask,
                               random_mask_1d,
                               realised_acceleration, seed_for_file)

# INVDIFF_HYPOTHESIS_EXAMPLES=500 for a deeper search than the fast default
HYP = settings(max_examples=int(os.environ.get("INVDIFF_HYPOTHESIS_EXAMPLES", "15")), deadline=None,
               suppress_health_check=[HealthCheck.too_slow])
ONE_D = ["equispaced", "random", "gaussian", "poisson-1d"]


def _center_cols(W, cf):
    n = int(cf * W)
    return list(range(W // 2 - n // 2, W // 2 - n // 2 + n))


def _acs_run(cols):
    """Length of the run of sampled columns containing the DC column W // 2."""
    W = cols.numel()
    if not cols[W // 2]:
        return 0
    lo = hi = W // 2
    while lo > 0 and cols[lo - 1]:
        lo -= 1
    while hi < W - 1 and cols[hi + 1]:
        hi += 1
    return hi - lo + 1


# ------------------------------------------------------------------------------------------------
# MRI masks
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ONE_D)
@pytest.mark.parametrize("W,acc", [(320, 4), (368, 8), (640, 4), (96, 6)])
def test_fastmri_acceleration_close_to_nominal(kind, W, acc):
    """Realised acceleration (W / sampled columns), averaged over 8 seeds, within 6 % of nominal."""
    rs = [realised_acceleration(make_mask(kind, (4, W), acc, seed=s)) for s in range(8)]
    mean = sum(rs) / len(rs)
    assert abs(mean - acc) / acc < 0.06, (kind, W, acc, rs)
    if kind != "equispaced":                     # exactly W // acc columns
        assert all(int(W / r + 0.5) == W // acc for r in rs)


@pytest.mark.parametrize("shape,acc", [((64, 64), 4), ((96, 80), 6), ((128, 128), 8)])
def test_poisson_acceleration_close_to_nominal(shape, acc):
    m = poisson_disc_mask(shape, acc, seed=3)
    assert abs(realised_acceleration(m) - acc) < 0.1        # sigpy's tolerance
    cf = default_center_fraction(acc)
    ch, cw = int(cf * shape[0]), int(cf * shape[1])
    H, W = shape
    assert m[int(H / 2 - ch / 2): int(H / 2 + ch / 2), int(W / 2 - cw / 2): int(W / 2 + cw / 2)].all()


@HYP
@given(W=st.integers(16, 160), H=st.integers(1, 6), acc=st.floats(1.0, 8.0), kind=st.sampled_from(ONE_D),
       seed=st.integers(0, 2**31), cf_scale=st.floats(0.3, 1.0))
def test_line_masks_properties(W, H, acc, kind, seed, cf_scale):
    cf = max(1.0 / W, cf_scale * default_center_fraction(acc))
    if int(cf * W) > W // acc:
        with pytest.raises(ValueError, match="center_fraction"):
            make_mask(kind, (H, W), acc, cf, seed)
        return
    m = make_mask(kind, (H, W), acc, cf, seed)
    assert m.shape == (H, W) and m.dtype == torch.float32
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(m, m[:1].expand_as(m))                       # whole columns
    assert _acs_run(m[0]) >= int(cf * W)                             # fully sampled centre around DC
    assert torch.equal(m, make_mask(kind, (H, W), acc, cf, seed))   # deterministic per seed
    n = int(m[0].sum())
    if kind == "equispaced":
        assert W // acc - 1 <= n <= W / acc + int(cf * W) + 1
    else:
        assert n == max(int(W // acc), int(cf * W))


@pytest.mark.parametrize("W,acc", [(64, 4), (64, 8), (320, 4), (368, 8), (96, 6), (64, 2.5)])
def test_poisson_disc_lines(W, acc):
    """1D Poisson disc: exact line count, the deepinv centre block, the minimum gap, deterministic per seed."""
    cf = default_center_fraction(acc)
    nc = int(cf * W)
    centre = _center_cols(W, cf)
    outer = torch.zeros(W)
    for seed in range(6):
        m = make_mask("poisson-1d", (3, W), acc, seed=seed)
        assert torch.equal(m, poisson_disc_mask_1d((3, W), acc, seed=seed))           # deterministic
        cols = m[0].nonzero().flatten().tolist()
        assert len(cols) == int(W // acc) and m[0, centre].all()                      # count, centre block
        out = [c for c in cols if c not in centre]
        gap = 2 if acc >= 4 else 1                       # auto: 2 where it fits (4x and up here)
        assert min(b - a for a, b in zip(out, out[1:])) >= gap                          # min gap
        assert all(min(abs(c - k) for k in centre) >= gap for c in out)                # ... from the centre too
        outer[out] += 1
    # density falls from the centre: the inner half of the outside columns gets more lines than the outer half
    d = (torch.arange(W) - W // 2).abs()
    inner = d < W // 4
    assert outer[inner].sum() > outer[~inner].sum()
    a, b = (poisson_disc_mask_1d((1, W), acc, seed=s) for s in (0, 1))
    assert not torch.equal(a, b)


def test_poisson_disc_lines_min_gap():
    m = poisson_disc_mask_1d((1, 96), 8, seed=3, min_gap=4)
    cols = m[0].nonzero().flatten().tolist()
    out = [c for c in cols if c not in _center_cols(96, 0.04)]
    assert len(cols) == 12 and min(b - a for a, b in zip(out, out[1:])) >= 4
    assert all(min(abs(c - k) for k in _center_cols(96, 0.04)) >= 4 for c in out)
    with pytest.raises(ValueError, match="min_gap"):
        poisson_disc_mask_1d((1, 64), 2, min_gap=3)                  # 27 columns 3 apart do not fit in 59
    with pytest.raises(ValueError, match="min_gap"):
        poisson_disc_mask_1d((1, 64), 4, min_gap=0)


def test_center_fraction_defaults_are_fastmri():
    assert default_center_fraction(4) == 0.08 and default_center_fraction(7.9) == 0.08
    assert default_center_fraction(8) == 0.04 and default_center_fraction(12) == 0.04
    m = random_mask_1d((1, 320), 4)                                   # 25 centre lines at W = 320
    assert m[0, _center_cols(320, 0.08)].all()


def test_seed_for_file_is_stable_and_distinguishes_files():
    assert seed_for_file("file1000001.h5") == 2151663471             # zlib.crc32: same on every machine
    assert seed_for_file("/a/b/file1000001.h5") == seed_for_file("file1000001.h5")
    assert seed_for_file("file1000001.h5") != seed_for_file("file1000002.h5")
    s = seed_for_file("file1000001.h5")
    assert torch.equal(equispaced_mask((4, 64), 4, seed=s), equispaced_mask((4, 64), 4, seed=s))
    a, b = (random_mask_1d((4, 96), 4, seed=seed_for_file(f"file{i}.h5")) for i in (1, 2))
    assert not torch.equal(a, b)


def test_different_seeds_give_different_masks():
    for kind in ["random", "gaussian", "poisson", "poisson-1d"]:
        assert not torch.equal(make_mask(kind, (32, 64), 4, seed=0), make_mask(kind, (32, 64), 4, seed=1))


def test_leading_axes_broadcast():
    m = poisson_disc_mask((3, 32, 32), 2.5, seed=1)
    assert m.shape == (3, 32, 32) and torch.equal(m[0], m[2])
    m = gaussian_mask_1d((2, 5, 48), 4)
    assert m.shape == (2, 5, 48) and torch.equal(m[0], m[1])


def test_acceleration_one_is_fully_sampled():
    for kind in MASK_KINDS:
        assert make_mask(kind, (8, 16), 1).all()


# ------------------------------------------------------------------------------------------------
# inpainting masks
# ------------------------------------------------------------------------------------------------
def test_box_and_half_masks():
    m = box_mask((3, 8, 10), 0.5)
    assert m.shape == (1, 8, 10) and m.sum() == 80 - 4 * 5
    assert m[0, 2:6, 2:7].eq(0).all()
    m = box_mask((8, 8), box=(1, 2, 3, 4))
    assert m[0, 1:4, 2:6].eq(0).all() and m.sum() == 64 - 12
    g = torch.Generator().manual_seed(0)
    r = box_mask((32, 32), 0.25, generator=g)
    assert r.sum() == 1024 - 64
    for side, region in [("left", (slice(None), slice(0, 4))), ("right", (slice(None), slice(4, 8))),
                         ("top", (slice(0, 3), slice(None))), ("bottom", (slice(3, 6), slice(None)))]:
        m = half_mask((6, 8), side)
        assert m[0][region].eq(0).all() and m.sum() == 48 - m[0][region].numel()


@HYP
@given(H=st.integers(2, 32), W=st.integers(2, 32), keep=st.floats(0.0, 1.0), seed=st.integers(0, 2**31))
def test_random_mask_property(H, W, keep, seed):
    m = random_mask((H, W), keep, torch.Generator().manual_seed(seed))
    assert m.shape == (1, H, W) and set(m.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(m, random_mask((H, W), keep, torch.Generator().manual_seed(seed)))


def test_random_mask_keep_fraction():
    m = random_mask((128, 128), 0.3, torch.Generator().manual_seed(0))
    assert abs(m.mean().item() - 0.3) < 0.01


@HYP
@given(H=st.integers(16, 64), W=st.integers(16, 64), seed=st.integers(0, 2**31))
def test_brush_mask_property(H, W, seed):
    m = brush_mask((H, W), torch.Generator().manual_seed(seed))
    assert m.shape == (1, H, W) and set(m.unique().tolist()) <= {0.0, 1.0}
    assert 0.0 < (1 - m).mean() < 0.9                                    # some strokes, not everything
    assert torch.equal(m, brush_mask((H, W), torch.Generator().manual_seed(seed)))


def test_brush_mask_hole_statistics_at_256():
    """DeepFill v2 strokes at 256x256 cover on average roughly 10-35 % of the image."""
    holes = [1 - brush_mask((256, 256), torch.Generator().manual_seed(s)).mean().item() for s in range(6)]
    mean = sum(holes) / len(holes)
    assert 0.05 < mean < 0.45, holes
