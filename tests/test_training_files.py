"""Training data streamed from fastMRI / NIfTI / DICOM files (issue 11 item 2): lazy index, normalisation shared
with reconstruct, determinism per (seed, step), identical batches with DataLoader workers, exact resume."""
import pickle

import numpy as np
import pytest
import torch

from invdiff.datasets import write_nifti, write_synthetic_dataset
from invdiff.datasets.fastmri import coil_combine, kspace_scale, read_fastmri, volume_scale
from invdiff.training import make_config, stream_batches, train
from invdiff.training.files import FileSliceSource

TINY = dict(base_channels=8, channel_mult=(1, 2), emb_dim=16, batch_size=4, warmup=2, log_every=1, ckpt_every=2,
            keep_every=0, progress=False)


@pytest.fixture(scope="module")
def fastmri_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fm")
    write_synthetic_dataset(d, 3, n_slices=3, coils=4, shape=(40, 32), recon_size=(32, 32), noise=0.01)
    return d


def test_fastmri_images_rss_magnitude_scaled_like_reconstruct(fastmri_dir):
    src = FileSliceSource("fastmri", fastmri_dir, size=32)
    assert src._starts is None                         # the index is built lazily, from headers
    assert len(src) == 9 and src.locate(4) == (1, 1)
    vol = read_fastmri(src.files[1])
    scale = volume_scale(src.files[1])
    assert scale == pytest.approx(kspace_scale(vol.kspace), rel=1e-6)   # streamed = reconstruct's whole-volume value
    img = src.image(4)
    assert img.shape == (2, 32, 32)
    # rss-phase: magnitude = fastMRI's RSS target (centre crop) / the volume scale
    assert torch.allclose(img.norm(dim=0), torch.from_numpy(vol.target[1]) / scale, atol=1e-4)
    mags = torch.stack([src.image(j).norm(dim=0).max() for j in range(3, 6)])
    assert float(mags.max()) == pytest.approx(1.0, abs=0.02)
    phase = torch.atan2(img[1], img[0])[img.norm(dim=0) > 0.3]
    assert float(phase.std()) > 0.05                   # the phantom's smooth phase is kept (not a magnitude image)


def test_rss_phase_and_espirit_agree_up_to_a_global_phase(fastmri_dir):
    k = read_fastmri(sorted(fastmri_dir.glob("*.h5"))[0], slices=[1]).kspace[0]
    a, b = coil_combine(k, "rss-phase"), coil_combine(k, "espirit")
    m = np.abs(a) > 0.3 * np.abs(a).max()
    rel = np.abs(np.abs(a[m]) - np.abs(b[m])) / np.abs(a[m])
    assert np.median(rel) < 0.05
    d = np.angle(a[m] * np.conj(b[m]))
    assert np.std(np.angle(np.exp(1j * (d - np.angle(np.exp(1j * d).mean()))))) < 0.2


def test_stream_is_a_function_of_seed_and_step_any_workers(fastmri_dir):
    src = FileSliceSource("fastmri", fastmri_dir, size=32, seed=4)
    assert torch.equal(src(3, 4), src(3, 4)) and not torch.equal(src(3, 4), src(4, 4))
    assert torch.equal(src.part(3, 4, 1, 3), src(3, 4)[1:3])
    plain = list(stream_batches(src, 1, 4, 4, 0, 4, workers=0))
    pooled = list(stream_batches(src, 1, 4, 4, 0, 4, workers=2))
    assert all(torch.equal(a, b) for a, b in zip(plain, pooled)) and len(pooled) == 3
    size0 = len(pickle.dumps(src))
    for j in range(len(src)):
        src.image(j)
    assert len(pickle.dumps(src)) - size0 < 200 * len(src.files)   # per file a few numbers: no image cache


def test_nifti_ct_window_mri_minmax_and_slice_axis(tmp_path):
    ct = np.full((4, 20, 24), -1000.0, np.float32)
    ct[:, 5:15, 6:18] = 0.0
    ct[:, 8:10, 8:10] = 3000.0
    write_nifti(tmp_path / "ct" / "a.nii.gz", ct)
    mr = np.linspace(5, 105, 4 * 20 * 24, dtype=np.float32).reshape(4, 20, 24)
    write_nifti(tmp_path / "mr" / "b.nii", mr)
    src = FileSliceSource("nifti", tmp_path / "ct", size=16)
    img = src.image(2)[0]
    assert img.shape == (16, 16) and src._norm[0][0] == "ct"
    assert float(img.min()) == 0.0 and float(img.max()) == 1.0
    assert float(img[8, 8]) == pytest.approx(0.25)    # water: (0 + 1000) / 4000
    src1 = FileSliceSource("nifti", tmp_path / "ct", size=16, slice_axis=1)
    assert len(src1) == 20 and src1.image(0).shape == (1, 16, 16)
    m = FileSliceSource("nifti", tmp_path / "mr", size=24, modality="auto")
    x = m.image(3)[0]
    assert m._norm[0][0] == "mri" and float(x.max()) == pytest.approx(1.0) and x.shape == (24, 24)
    assert float(m.image(0)[0][2:22].min()) == pytest.approx(0.0, abs=1e-6)   # zero-padded rows aside


def test_dicom_series_ct(tmp_path):
    from invdiff.datasets import write_dicom_series

    ct = np.full((3, 16, 16), -1000.0, np.float32)
    ct[:, 4:12, 4:12] = 1000.0
    write_dicom_series(tmp_path / "s1", ct, modality="CT")
    src = FileSliceSource("dicom", tmp_path, size=16)
    assert len(src) == 3 and src._norm == {}
    img = src.image(1)[0]
    assert float(img[8, 8]) == pytest.approx(0.5, abs=1e-3) and float(img[0, 0]) == pytest.approx(0.0, abs=1e-3)


def test_fastmri_patch_training_resumes_bitwise(tmp_path, fastmri_dir):
    base = dict(TINY, data=f"fastmri:{fastmri_dir}", size=32, patch_size=16, positional=True, out=str(tmp_path))
    st = train(make_config(dict(base, name="a", steps=4)))
    cfg = make_config(dict(base, name="b", steps=2, workers=1))
    train(cfg)
    cfg.steps = 4
    st2 = train(cfg)
    assert all(torch.equal(p, q) for p, q in zip(st.ema.parameters(), st2.ema.parameters()))


@pytest.mark.slow
def test_many_fastmri_files_two_workers_resume(tmp_path):
    d = tmp_path / "data"
    write_synthetic_dataset(d, 24, n_slices=2, coils=4, shape=(40, 32), recon_size=(32, 32))
    base = dict(TINY, data=f"fastmri:{d}", size=32, patch_size=16, out=str(tmp_path), workers=2)
    st = train(make_config(dict(base, name="a", steps=6)))
    cfg = make_config(dict(base, name="b", steps=3))
    train(cfg)
    cfg.steps = 6
    st2 = train(cfg)
    assert all(torch.equal(p, q) for p, q in zip(st.ema.parameters(), st2.ema.parameters()))
