"""Image metrics against skimage / numpy, fastMRI volume protocol, and posterior-sample metrics."""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from invdiff import metrics as M

F64 = torch.float64


def _pair(gen, shape=(3, 1, 20, 24)):
    ref = torch.rand(shape, generator=gen, dtype=F64)
    x = (ref + 0.1 * torch.randn(shape, generator=gen, dtype=F64)).clamp(0, 1)
    return x, ref


# ------------------------------------------------------------------------------------------------
# per-sample image metrics
# ------------------------------------------------------------------------------------------------
def test_psnr_and_nmse_match_skimage_numpy(gen):
    x, ref = _pair(gen)
    ours = M.psnr(x, ref, data_range=1.0)
    for b in range(3):
        assert ours[b] == pytest.approx(peak_signal_noise_ratio(ref[b].numpy(), x[b].numpy(), data_range=1.0),
                                        rel=1e-12)
    # default data range: the reference's per-sample maximum (fastMRI convention)
    dflt = M.psnr(x, ref)
    for b in range(3):
        R = float(ref[b].max())
        assert dflt[b] == pytest.approx(peak_signal_noise_ratio(ref[b].numpy(), x[b].numpy(), data_range=R), rel=1e-12)
    e = M.nmse(x, ref)
    for b in range(3):
        xb, rb = x[b].numpy(), ref[b].numpy()
        assert e[b] == pytest.approx(np.linalg.norm(rb - xb) ** 2 / np.linalg.norm(rb) ** 2, rel=1e-12)
    assert torch.isinf(M.psnr(ref, ref, 1.0)).all() and (M.nmse(ref, ref) == 0).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage(channels, gen):
    x, ref = _pair(gen, (2, channels, 19, 23))
    for dr in (1.0, None):
        ours = M.ssim(x, ref, data_range=dr)
        for b in range(2):
            R = dr if dr is not None else float(ref[b].max())
            sk = structural_similarity(ref[b].numpy(), x[b].numpy(), data_range=R, channel_axis=0)
            assert ours[b] == pytest.approx(sk, abs=1e-12)
    assert torch.allclose(M.ssim(ref, ref, 1.0), torch.ones(2, dtype=F64))
    # structure destroyed -> low SSIM, monotone in the noise level
    noisy = [float(M.ssim(ref + s * torch.randn(ref.shape, generator=gen, dtype=F64), ref, 1.0).mean())
             for s in (0.01, 0.1, 0.5)]
    assert noisy[0] > noisy[1] > noisy[2]


def test_complex_inputs_are_explicit(gen):
    x, ref = _pair(gen, (2, 2, 16, 16))
    mag = lambda t: t.pow(2).sum(1, keepdim=True).sqrt()  # noqa: E731
    assert torch.allclose(M.psnr(x, ref, 1.0, complex=True), M.psnr(mag(x), mag(ref), 1.0))
    assert torch.allclose(M.ssim(x, ref, 1.0, complex=True), M.ssim(mag(x), mag(ref), 1.0))
    assert torch.allclose(M.nmse(x, ref, complex=True), M.nmse(mag(x), mag(ref)))
    # without the flag two channels are two real channels: a different number
    assert not torch.allclose(M.psnr(x, ref, 1.0), M.psnr(x, ref, 1.0, complex=True))
    # a complex dtype is unambiguous
    xc, rc = torch.complex(x[:, :1], x[:, 1:]), torch.complex(ref[:, :1], ref[:, 1:])
    assert torch.allclose(M.psnr(xc, rc, 1.0), M.psnr(x, ref, 1.0, complex=True))
    with pytest.raises(ValueError, match="'x'.*2 channels"):
        M.psnr(x[:, :1], ref[:, :1], 1.0, complex=True)


def test_image_metric_errors(gen):
    x, ref = _pair(gen, (2, 1, 16, 16))
    with pytest.raises(ValueError, match="'x'"):
        M.psnr(x[:1], ref)
    with pytest.raises(ValueError, match="'x'"):
        M.ssim(x[..., :5, :5], ref[..., :5, :5], 1.0)
    with pytest.raises(ValueError, match="'data_range'"):
        M.psnr(x, ref, data_range=-1.0)
    with pytest.raises(ValueError, match="'data_range'"):
        M.psnr(x, torch.zeros_like(ref))
    with pytest.raises(ValueError, match="'win_size'"):
        M.ssim(x, ref, 1.0, win_size=4)


# ------------------------------------------------------------------------------------------------
# fastMRI protocol
# ------------------------------------------------------------------------------------------------
def test_center_crop_fastmri_offsets():
    a = np.arange(7 * 6).reshape(7, 6)
    c = M.center_crop(a, (4, 3))  # fastMRI: offsets (7-4)//2 = 1, (6-3)//2 = 1
    assert np.array_equal(c, a[1:5, 1:4])
    t = torch.arange(2 * 8 * 5).reshape(2, 8, 5)
    assert torch.equal(M.center_crop(t, (5, 5)), t[:, 1:6, :])
    with pytest.raises(ValueError, match="'shape'"):
        M.center_crop(a, (8, 3))


def _independent_volume_metrics(recon, target):
    """numpy re-derivation of fastmri/evaluate.py (crop to the target width; volume max; SSIM per slice)."""
    W = target.shape[-1]
    def crop(v):
        h0, w0 = (v.shape[-2] - W) // 2, (v.shape[-1] - W) // 2
        return v[:, h0:h0 + W, w0:w0 + W]
    gt, pr = crop(target).astype(np.float64), crop(recon).astype(np.float64)
    maxval = gt.max()
    mse = np.mean((gt - pr) ** 2)
    ssim = float(M.ssim(torch.from_numpy(pr)[:, None], torch.from_numpy(gt)[:, None], data_range=maxval).mean())
    return {"NMSE": np.sum((gt - pr) ** 2) / np.sum(gt ** 2), "PSNR": 10 * np.log10(maxval ** 2 / mse), "SSIM": ssim}


def test_fastmri_metrics_vs_independent_numpy():
    rng = np.random.default_rng(0)
    target = (rng.random((4, 20, 16)) * np.linspace(0.5, 2.0, 4)[:, None, None]).astype(np.float32)
    recon = np.zeros((4, 24, 18), dtype=np.float32)
    recon[:, 2:22, 1:17] = target + 0.05 * rng.standard_normal(target.shape).astype(np.float32)
    ours = M.fastmri_metrics(recon, target)
    ref = _independent_volume_metrics(recon, target)
    for k in ("NMSE", "PSNR", "SSIM"):
        assert ours[k] == pytest.approx(ref[k], rel=1e-5), k
    # torch input and 2-channel complex input (explicit flag) give the same numbers
    comp = np.stack([recon, np.zeros_like(recon)], 1)
    assert M.fastmri_metrics(torch.from_numpy(comp), torch.from_numpy(target), complex=True) == \
        pytest.approx(M.fastmri_metrics(np.abs(recon), target), rel=1e-6)
    with pytest.raises(ValueError, match="'recon_volume'.*complex=True"):
        M.fastmri_metrics(comp, target)
    summary = M.fastmri_summary([ours, ref | {"MSE": 0.0}])
    assert summary["PSNR"][2] == 2
    assert summary["PSNR"][1] == pytest.approx(2 * np.std([ours["PSNR"], ref["PSNR"]], ddof=1))


# ------------------------------------------------------------------------------------------------
# posterior metrics
# ------------------------------------------------------------------------------------------------
def test_sliced_wasserstein_basic_properties(gen):
    a = torch.randn(300, 6, generator=gen, dtype=F64)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731 - same projections
    assert M.sliced_wasserstein(a, a, 200, generator=g()) == 0.0
    assert M.sliced_wasserstein(a, a[torch.randperm(300, generator=gen)], 200, generator=g()) < 1e-12
    # same empirical measure with duplicated atoms (different sizes) -> 0
    assert M.sliced_wasserstein(a, torch.cat([a, a]), 200, generator=g()) < 1e-12
    # a mean shift delta moves every projection by theta . delta: SW_2 = sqrt(mean (theta . delta)^2), linear in delta
    delta = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 1.0], dtype=F64)
    sw1 = M.sliced_wasserstein(a, a + delta, 500, generator=g())
    sw2 = M.sliced_wasserstein(a, a + 2 * delta, 500, generator=g())
    assert sw2 == pytest.approx(2 * sw1, rel=1e-10)
    assert sw1 == pytest.approx(float(delta.norm()) / math.sqrt(6), rel=0.1)  # E (theta.delta)^2 = |delta|^2 / d
    # uniform weights == unweighted; weights equal to duplicate counts == duplicated set
    w = torch.ones(300, dtype=F64)
    assert M.sliced_wasserstein(a, a + delta, 500, generator=g(), weights_a=w) == pytest.approx(sw1, rel=1e-10)
    counts = torch.randint(1, 4, (300,), generator=gen)
    dup = a.repeat_interleave(counts, 0)
    b = torch.randn(250, 6, generator=gen, dtype=F64)
    assert M.sliced_wasserstein(a, b, 100, generator=g(), weights_a=counts.to(F64)) == \
        pytest.approx(M.sliced_wasserstein(dup, b, 100, generator=g()), rel=1e-10)
    with pytest.raises(ValueError, match="'b'"):
        M.sliced_wasserstein(a, b[:, :5])


def test_sliced_wasserstein_1d_matches_scipy(gen):
    """In 1-D every projection is +-1, so SW_1 is the exact W_1 (scipy, with weights and unequal sizes)."""
    u = torch.randn(137, 1, generator=gen, dtype=F64)
    v = 0.5 + 2 * torch.randn(89, 1, generator=gen, dtype=F64)
    wu = torch.rand(137, generator=gen, dtype=F64)
    wv = torch.rand(89, generator=gen, dtype=F64)
    ref = stats.wasserstein_distance(u[:, 0].numpy(), v[:, 0].numpy(), wu.numpy(), wv.numpy())
    ours = M.sliced_wasserstein(u, v, 3, p=1, weights_a=wu, weights_b=wv, generator=torch.Generator().manual_seed(0))
    assert ours == pytest.approx(ref, rel=1e-10)


def test_sw_between_exact_sets_is_at_the_floor(gen):
    L = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [0.0, -0.3, 0.4]], dtype=F64)
    sampler = lambda k, g: torch.randn(k, 3, generator=g, dtype=F64) @ L.T  # noqa: E731
    floor = M.sw_monte_carlo_floor(sampler, 1000, n_repeats=6, n_projections=200, generator=gen)
    assert floor.mean > 0 and floor.std > 0 and len(floor.values) == 6
    g = torch.Generator().manual_seed(99)
    sw = M.sliced_wasserstein(sampler(1000, g), sampler(1000, g), 200, generator=g)
    assert abs(sw - floor.mean) < 5 * floor.std
    shifted = M.sliced_wasserstein(sampler(1000, g) + 0.3, sampler(1000, g), 200, generator=g)
    assert shifted > floor.mean + 5 * floor.std
    # .sample(n, generator=...) objects are accepted too
    class S:
        def sample(self, k, generator=None):
            return sampler(k, generator)
    assert M.sw_monte_carlo_floor(S(), 100, n_repeats=2, n_projections=20).n == 100


def test_coverage_of_calibrated_gaussian(gen):
    S, d = 4000, 50
    samples = torch.randn(S, d, generator=gen, dtype=F64)
    truths = torch.randn(40, d, generator=gen, dtype=F64)  # 2000 (truth, pixel) pairs
    for level in (0.5, 0.9):
        assert M.coverage(samples, truths, level) == pytest.approx(level, abs=0.03)
    # overconfident samples under-cover: P(|z| < 1.645 * 0.5) = 0.59
    assert M.coverage(0.5 * samples, truths, 0.9) == pytest.approx(0.59, abs=0.04)
    cmap = M.coverage(samples, truths[0], 0.9, reduce=False)
    assert cmap.shape == (d,) and cmap.dtype == torch.bool
    # interval endpoints are numpy's linear-interpolation quantiles
    s = samples[:101, :1]
    lo, hi = np.quantile(s.numpy(), [0.05, 0.95])
    assert M.coverage(s, torch.tensor([lo - 1e-12]), 0.9) == 0.0
    assert M.coverage(s, torch.tensor([lo + 1e-12]), 0.9) == 1.0 and M.coverage(s, torch.tensor([hi]), 0.9) == 1.0
    with pytest.raises(ValueError, match="'truth'"):
        M.coverage(samples, torch.zeros(3), 0.9)
    with pytest.raises(ValueError, match="'level'"):
        M.coverage(samples, truths, 1.5)


def test_mode_weights(gen):
    means = torch.tensor([[-5.0, 0.0], [5.0, 0.0], [0.0, 8.0]], dtype=F64)
    lab = torch.multinomial(torch.tensor([0.2, 0.5, 0.3]), 5000, replacement=True, generator=gen)
    X = means[lab] + torch.randn(5000, 2, generator=gen, dtype=F64)
    mw = M.mode_weights(X, means)
    assert torch.allclose(mw, torch.bincount(lab, minlength=3).to(F64) / 5000, atol=2e-3)
    assert float(mw.sum()) == pytest.approx(1.0)
