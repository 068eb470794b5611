"""fastMRI h5: synthetic files, reading, masks, bad files, submission writing, and the evaluation round trip."""
import json

import h5py
import numpy as np
import pytest
import torch

from invdiff.datasets.fastmri import (DataFileError, FastMRISliceDataset, column_mask, evaluate, inspect_fastmri,
                                      read_fastmri, read_reconstruction, write_reconstruction)
from invdiff.datasets.synthetic_fastmri import write_synthetic_fastmri
from invdiff.operators import MultiCoilMRI, birdcage_maps, make_mask, seed_for_file


def np_ifft2c(k):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def np_crop(a, h, w):
    H, W = a.shape[-2:]
    t, l = (H - h) // 2, (W - w) // 2
    return a[..., t:t + h, l:l + w]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fastmri")
    return {
        "multicoil": write_synthetic_fastmri(d / "file_mc.h5", n_slices=3, coils=4, shape=(48, 40), seed=1),
        "singlecoil": write_synthetic_fastmri(d / "file_sc.h5", n_slices=2, shape=(40, 40), kind="singlecoil",
                                              seed=2, phantom="shepp-logan"),
        "test": write_synthetic_fastmri(d / "file_test.h5", n_slices=2, coils=4, shape=(40, 40), kind="test",
                                        seed=3, acceleration=4),
    }


def test_multicoil_layout_header_and_target(files):
    vol = read_fastmri(files["multicoil"])
    assert vol.challenge == "multicoil" and vol.kspace.shape == (3, 4, 48, 40) and vol.kspace.dtype == np.complex64
    assert vol.target_key == "reconstruction_rss" and vol.target.shape == (3, 40, 40)
    assert vol.header["encoding_size"] == (48, 40, 1) and vol.recon_size == (40, 40)
    assert vol.padding == (0, 40)                      # fastMRI's formula: enc_y // 2 - center, + maximum + 1
    # target = centre-cropped root-sum-of-squares of the coil images, recomputed independently
    rss = np.sqrt((np.abs(np_ifft2c(vol.kspace)) ** 2).sum(1))
    np.testing.assert_allclose(np_crop(rss, 40, 40), vol.target, rtol=1e-5, atol=1e-9)
    assert vol.attrs["max"] == pytest.approx(float(vol.target.max()), rel=1e-6)
    assert vol.attrs["acquisition"] == "AXT2" and isinstance(vol.attrs["patient_id"], str)


def test_kspace_convention_matches_invdiff_operator(files):
    """Stored k-space == invdiff MultiCoilMRI(birdcage).A(image): the centred orthonormal FFT conventions agree."""
    vol = read_fastmri(files["multicoil"])
    img = np_ifft2c(vol.kspace)                                             # coil images
    maps = birdcage_maps(4, (48, 40)).numpy()
    x = (np.conj(maps)[None] * img).sum(1)                                  # SENSE combination (sum |c|^2 = 1)
    xt = torch.from_numpy(np.stack([x.real, x.imag], 1)).float()
    y = MultiCoilMRI(None, torch.from_numpy(maps), img_size=(2, 48, 40)).A(xt)
    k = torch.complex(y[:, 0], y[:, 1]).numpy()
    np.testing.assert_allclose(k, vol.kspace, atol=1e-6 * np.abs(vol.kspace).max())


def test_singlecoil_and_test_layouts(files):
    sc = read_fastmri(files["singlecoil"])
    assert sc.challenge == "singlecoil" and sc.target_key == "reconstruction_esc" and sc.kspace.shape == (2, 40, 40)
    np.testing.assert_allclose(np.abs(np_ifft2c(sc.kspace)), sc.target, rtol=1e-5, atol=1e-9)
    t = read_fastmri(files["test"])
    assert t.target is None and t.mask.shape == (40,) and t.attrs["acceleration"] == 4
    assert t.attrs["num_low_frequency"] == int(0.08 * 40)
    expected = make_mask("equispaced", (1, 40), 4, seed=seed_for_file("file_test.h5"))[0].numpy()
    np.testing.assert_array_equal(t.mask, expected)                        # the file's own per-file seeded mask
    unsampled = t.kspace[..., t.mask == 0]
    assert np.all(unsampled == 0) and not np.signbit(unsampled.real).any()  # "* mask + 0.0": no -0.0 leak
    assert np.abs(t.kspace[..., t.mask == 1]).min() > 0


def test_column_mask_is_per_file_deterministic_and_zeroes_padding(files):
    info = inspect_fastmri(files["multicoil"])
    a = column_mask(info, "random", 4)
    assert torch.equal(a, column_mask(inspect_fastmri(files["multicoil"]), "random", 4))      # same file, same mask
    other = inspect_fastmri(files["singlecoil"])
    assert not torch.equal(a, column_mask(other, "random", 4))              # another file name, another mask
    info.header = dict(info.header, padding_left=3, padding_right=35)
    m = column_mask(info, "random", 4)
    assert m[:3].sum() == 0 and m[35:].sum() == 0 and m[17:23].sum() == 3   # padding zeroed, centre kept
    t = inspect_fastmri(files["test"])
    file_mask = read_fastmri(files["test"]).mask
    assert torch.equal(column_mask(t, "random", 8, file_mask=file_mask), torch.from_numpy(file_mask))


def test_slice_dataset(files):
    ds = FastMRISliceDataset(list(files.values()), mask_kind="random", acceleration=4)
    assert len(ds) == 3 + 2 + 2
    k, target, meta = ds[1]
    assert k.shape == (2, 4, 48, 40) and k.dtype == torch.float32 and target.shape == (40, 40)
    assert meta["fname"] == "file_mc.h5" and meta["slice"] == 1 and meta["challenge"] == "multicoil"
    assert meta["mask"].shape == (40,) and torch.all(k[..., meta["mask"] == 0] == 0)
    k, target, meta = ds[3]
    assert k.shape == (2, 40, 40) and meta["challenge"] == "singlecoil"
    k, target, meta = ds[6]
    assert target is None and meta["acceleration"] == 4 and meta["num_low_frequency"] == 3
    ref = torch.from_numpy(read_fastmri(files["test"]).mask)
    assert torch.equal(meta["mask"], ref)                                   # test files keep their own mask
    k0, _, _ = FastMRISliceDataset(files["multicoil"])[0]                    # no mask_kind: k-space as stored
    assert (k0 != 0).float().mean() > 0.99


def _bad(tmp_path, kind):
    p = tmp_path / f"bad_{kind}.h5"
    if kind == "corrupt":
        p.write_bytes(b"not an hdf5 file" * 64)
    elif kind == "truncated":
        good = write_synthetic_fastmri(tmp_path / "good.h5", n_slices=2, coils=2, shape=(32, 32))
        p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    else:
        with h5py.File(p, "w") as f:
            if kind == "no_kspace":
                f.create_dataset("reconstruction_rss", data=np.zeros((2, 8, 8), np.float32))
            elif kind == "wrong_dims":
                f.create_dataset("kspace", data=np.zeros((8, 8), np.complex64))
            elif kind == "real_dtype":
                f.create_dataset("kspace", data=np.zeros((2, 8, 8), np.float32))
            elif kind == "nan":
                k = np.ones((2, 3, 8, 8), np.complex64)
                k[1, 2, 3, 4] = np.nan
                f.create_dataset("kspace", data=k)
    return p


@pytest.mark.parametrize("kind,words", [("corrupt", "HDF5"), ("truncated", "HDF5"), ("no_kspace", "'kspace'"),
                                        ("wrong_dims", "shape (8, 8)"), ("real_dtype", "complex"),
                                        ("nan", "NaN")])
def test_bad_files_one_clear_error(tmp_path, kind, words):
    p = _bad(tmp_path, kind)
    with pytest.raises(DataFileError) as e:
        read_fastmri(p)
    msg = str(e.value)
    assert str(p) in msg and words in msg
    assert isinstance(e.value, ValueError) and "\n" not in msg


def test_write_reconstruction_is_atomic_and_readable(tmp_path):
    out = tmp_path / "sub" / "file_x.h5"
    r = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    write_reconstruction(out, r, {"acquisition": "AXT2", "nfe": 5, "skip": None}, extra={"reconstruction_std": r / 2})
    np.testing.assert_array_equal(read_reconstruction(out), r)
    with h5py.File(out) as f:
        assert f.attrs["acquisition"] == "AXT2" and f.attrs["nfe"] == 5 and "skip" not in f.attrs
        assert f["reconstruction_std"].shape == (3, 16, 16)
    assert sorted(p.name for p in out.parent.iterdir()) == ["file_x.h5"]      # no temporary file left
    with pytest.raises(ValueError, match="finite"):
        write_reconstruction(tmp_path / "nan.h5", np.full((1, 4, 4), np.nan))
    assert not (tmp_path / "nan.h5").exists()


def _independent_fastmri_protocol(target_path, pred_path):
    """fastmri/evaluate.py written out with numpy/skimage only (not invdiff.metrics), on the arrays as stored
    (float32, like evaluate.py: its NMSE is np.linalg.norm of float32 arrays)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    with h5py.File(target_path) as f:
        key = "reconstruction_rss" if f["kspace"].ndim == 4 else "reconstruction_esc"
        gt = f[key][()]
    with h5py.File(pred_path) as f:
        pred = f["reconstruction"][()]
    w = gt.shape[-1]
    gt, pred = np_crop(gt, w, w), np_crop(pred, w, w)
    maxval = gt.max()
    return {"NMSE": np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2,
            "PSNR": peak_signal_noise_ratio(gt, pred, data_range=maxval),
            "SSIM": np.mean([structural_similarity(gt[s], pred[s], data_range=maxval) for s in range(gt.shape[0])])}


def test_roundtrip_synthetic_reconstruct_evaluate(tmp_path, capsys):
    """synthetic files -> `invdiff reconstruct` -> fastMRI evaluation == an independent numpy/skimage computation."""
    from invdiff.cli import main

    data = tmp_path / "data"
    write_synthetic_fastmri(data / "file_a.h5", n_slices=2, coils=4, shape=(48, 48), seed=5)
    write_synthetic_fastmri(data / "file_b.h5", n_slices=3, shape=(40, 32), kind="singlecoil", seed=6,
                            recon_size=(24, 24))
    write_synthetic_fastmri(data / "file_t.h5", n_slices=2, coils=4, shape=(48, 48), kind="test", seed=7,
                            center_fraction=0.25)
    out = tmp_path / "out"
    rc = main(["reconstruct", str(data), "--solver", "cg", "--out", str(out), "--center-fraction", "0.25",
               "--set", "solver.max_iter=5", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    with h5py.File(out / "file_b.h5") as f:
        assert f["reconstruction"].shape == (3, 24, 24) and f.attrs["solver"] == "cg"
    with h5py.File(out / "file_t.h5") as f:                                  # test file: header recon size
        assert f["reconstruction"].shape == (2, 48, 48) and f.attrs["mask"] == "file"
    per_volume, summary = evaluate(data, out)
    assert sorted(per_volume) == ["file_a.h5", "file_b.h5"]                  # the test file has no target
    index = {r["output"]: r for r in json.loads((out / "index.json").read_text())["records"]}
    for name, m in per_volume.items():
        ref = _independent_fastmri_protocol(data / name, out / name)
        for k in ("NMSE", "PSNR", "SSIM"):
            assert m[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), (name, k)
            assert index[name]["metrics"][k] == pytest.approx(ref[k], rel=1e-5), (name, k)  # float32 file copy
        assert 10 < m["PSNR"] < 60
    vals = np.array([per_volume[n]["PSNR"] for n in sorted(per_volume)])
    assert summary["PSNR"][0] == pytest.approx(vals.mean()) and summary["PSNR"][2] == 2
    assert summary["PSNR"][1] == pytest.approx(2 * vals.std(ddof=1))           # fastMRI prints mean +/- 2 std


def test_anatomy_files_hold_heldout_anatomy_slices_in_the_centre_of_the_field_of_view(tmp_path):
    """``phantom="anatomy"``: the file's target is the held-out anatomy slice of its seed (never a training seed),
    filling the centred min(H, W) square, cropped to ``recon_size``."""
    from invdiff.datasets import split_seeds
    from invdiff.datasets.anatomy import mri_anatomy_np

    f = write_synthetic_fastmri(tmp_path / "file_anat.h5", n_slices=2, coils=3, shape=(80, 48), recon_size=(40, 40),
                                seed=5, phantom="anatomy", acquisition="CORPD_FBK")
    vol = read_fastmri(f)
    seeds = split_seeds("heldout", 2, start=5000)
    want = np.stack([np_crop(np.abs(mri_anatomy_np(s, 48, thermal_noise=False)), 40, 40) for s in seeds])
    np.testing.assert_allclose(vol.target / 1e-3, want, atol=1e-4)
    assert min(seeds) >= 10 ** 9 and vol.attrs["acquisition"] == "CORPD_FBK"
    with pytest.raises(ValueError, match="phantom"):
        write_synthetic_fastmri(tmp_path / "bad.h5", phantom="knee")


@pytest.mark.filterwarnings("ignore:prior 'mri-brainphantom-64' was trained")
def test_multicoil_reconstruction_is_zero_where_no_coil_map_reaches(tmp_path, capsys):
    """``coil_support``: where every ESPIRiT map is zero the data say nothing, so the image is zeroed there (SENSE
    convention) instead of showing what the solver's regulariser painted; elsewhere it is unchanged. "auto" (the
    default): on for solvers with a prior, off for classical ones."""
    from invdiff.cli import main
    from invdiff.datasets.fastmri import column_mask, kspace_to_tensor
    from invdiff.operators import espirit_maps

    data = tmp_path / "data"
    f = write_synthetic_fastmri(data / "file_s.h5", n_slices=1, coils=4, shape=(48, 48), seed=3,
                                phantom="anatomy", noise=0.01)
    outs = {}
    for name, solver, flag in (("tv", "tv", "true"), ("tv-off", "tv", "false"), ("tv-auto", "tv", "auto"),
                               ("dds-auto", "dds", "auto")):
        out = tmp_path / f"out_{name}"
        extra = ["--prior", "mri-brainphantom-64", "--set", "solver.num_steps=2"] if solver == "dds" else \
            ["--set", "solver.n_iter=20"]
        rc = main(["reconstruct", str(data), "--solver", solver, "--out", str(out), "--center-fraction", "0.25",
                   "--set", f"coil_support={flag}", "--set", "noise_floor=false", "--no-progress"] + extra)
        assert rc == 0, capsys.readouterr().err
        with h5py.File(out / "file_s.h5") as h:
            outs[name] = h["reconstruction"][0]
    vol = read_fastmri(f)
    cols = column_mask(vol.info, "auto", 4, 0.25)
    k = vol.kspace * cols.numpy()
    y = kspace_to_tensor(k / np.abs(k).max()).movedim(0, 1)
    support = (espirit_maps(y, mask=cols[None].expand(48, 48)).abs().amax(1) > 0)[0].numpy()
    assert 0 < support.mean() < 1
    assert np.all(outs["tv"][~support] == 0) and np.abs(outs["tv-off"][~support]).max() > 0
    np.testing.assert_allclose(outs["tv"][support], outs["tv-off"][support], rtol=1e-6)
    np.testing.assert_array_equal(outs["tv-auto"], outs["tv-off"])                  # classical: off (no floor)
    assert np.all(outs["dds-auto"][~support] == 0) and np.abs(outs["dds-auto"][support]).max() > 0


def test_kspace_noise_estimate_and_rss_noise_floor_match_monte_carlo():
    """The robust noise std recovers the thermal noise of k-space that also holds an object (and zeros where
    unmeasured), at 0.25 % to 2.5 % of the image's maximum; the RSS floor formula is the chi mean (Monte Carlo, 15
    coils and 1 coil)."""
    from invdiff.datasets.anatomy import mri_anatomy_np
    from invdiff.datasets.fastmri import fft2c, kspace_noise_std, rss_noise_floor

    rng = np.random.default_rng(0)
    obj = np.pad(np.abs(mri_anatomy_np(5, 96, thermal_noise=False)), ((48, 48), (0, 0)))  # 2x readout oversampling
    img = np.stack([obj] * 6)[None]                                                          # (1, 6, H, W)
    img = img * np.exp(1j * np.linspace(0, 3, 6))[None, :, None, None]
    for sigma in (0.0025, 0.025):
        k = fft2c(img) + sigma * (rng.standard_normal(img.shape) + 1j * rng.standard_normal(img.shape))
        k[..., ::3] = 0                                                  # unmeasured columns are exact zeros
        assert abs(kspace_noise_std(k) / sigma - 1) < 0.05
    assert np.isnan(kspace_noise_std(np.zeros((1, 2, 16, 16), complex)))
    for C in (15, 1):
        n = rng.standard_normal((200000, C)) + 1j * rng.standard_normal((200000, C))
        assert abs(np.sqrt((np.abs(n) ** 2).sum(1)).mean() / rss_noise_floor(1.0, C) - 1) < 0.005


def test_fastmri_output_estimates_the_noisy_target_with_its_noise_floor(tmp_path, capsys):
    """``noise_floor`` (default true): the written image is sqrt(|x|^2 + F^2), F the mean RSS noise floor of the
    file's thermal noise (estimated from the k-space corners, written as attributes): where no coil sees anything it
    equals F, which matches the target's background; ``noise_floor=false`` writes |x|."""
    from invdiff.cli import main

    data = tmp_path / "data"
    write_synthetic_fastmri(data / "file_n.h5", n_slices=1, coils=8, shape=(96, 64), seed=4, phantom="anatomy",
                            noise=0.02)
    outs, attrs = {}, {}
    for flag in ("true", "false"):
        out = tmp_path / f"out_{flag}"
        rc = main(["reconstruct", str(data), "--solver", "tv", "--out", str(out), "--set", "solver.n_iter=20",
                   "--center-fraction", "0.25",
                   "--set", "coil_support=true", "--set", f"noise_floor={flag}", "--no-progress"])
        assert rc == 0, capsys.readouterr().err
        with h5py.File(out / "file_n.h5") as h:
            outs[flag], attrs[flag] = h["reconstruction"][0], dict(h.attrs)
    F = attrs["true"]["noise_floor"]
    rc = main(["reconstruct", str(data), "--solver", "tv", "--out", str(tmp_path / "auto"), "--set", "solver.n_iter=20",
               "--center-fraction", "0.25", "--no-progress"])                   # defaults: floor, so coil_support
    assert rc == 0, capsys.readouterr().err
    with h5py.File(tmp_path / "auto" / "file_n.h5") as h:
        np.testing.assert_array_equal(h["reconstruction"][0], outs["true"])
    assert attrs["false"]["noise_floor"] == 0 and attrs["true"]["kspace_noise_std"] > 0
    np.testing.assert_allclose(outs["true"], np.sqrt(outs["false"].astype(np.float64) ** 2 + F ** 2), rtol=1e-5)
    target = read_fastmri(data / "file_n.h5").target[0]
    air = outs["false"] == 0                                              # outside every coil map
    assert air.sum() > 50
    assert abs(np.median(target[air]) / F - 1) < 0.1
