"""fastMRI's own masks: bit for bit against masks made by the official code, per-file seeding, padding, defaults."""
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from invdiff.datasets.fastmri import (DataFileError, FastMRISliceDataset, column_mask, default_mask_kind,
                                      inspect_fastmri)
from invdiff.datasets.synthetic_fastmri import write_synthetic_fastmri
from invdiff.operators import (FASTMRI_MASK_KINDS, MASK_KINDS, fastmri_columns, fastmri_mask, fastmri_seed,
                               make_mask, seed_for_file, zero_padding)

FIXTURE = Path(__file__).parent / "data" / "fastmri_masks.npz"


@pytest.fixture(scope="module")
def official():
    with np.load(FIXTURE) as d:
        return {k: d[k] for k in d.files}


def _rows(d):
    kinds = [str(k) for k in d["kinds"]]
    for i in range(len(d["kind"])):
        name = str(d["fname"][i])
        seed = fastmri_seed(name) if d["seed"][i] < 0 else int(d["seed"][i])
        pad = None if d["padding_left"][i] < 0 else (int(d["padding_left"][i]), int(d["padding_right"][i]))
        yield (kinds[d["kind"][i]], name, seed, int(d["H"][i]), int(d["W"][i]), int(d["acceleration"][i]),
               float(d["center_fraction"][i]), pad, int(d["num_low_frequencies"][i]),
               d["columns"][d["offsets"][i]:d["offsets"][i + 1]])


def test_fixture_covers_the_protocols(official):
    rows = list(_rows(official))
    assert len(rows) >= 1000 and official["columns"].size == official["offsets"][-1]
    assert {r[0] for r in rows} == set(FASTMRI_MASK_KINDS)
    for kind in FASTMRI_MASK_KINDS:
        for acc, cf in ((4, 0.08), (8, 0.04)):
            widths = {r[4] for r in rows if r[0] == kind and r[5] == acc and r[6] == cf and r[7] is None}
            assert {368, 372, 320, 384, 396} <= widths, (kind, acc)
    assert sum(r[7] is not None for r in rows) >= 100
    assert sum(isinstance(r[2], int) for r in rows) >= 50 and sum("brain" in r[1] for r in rows) >= 500


def test_masks_equal_the_official_fastmri_masks(official):
    """Every (file name, shape, acceleration, centre fraction, family) of the fixture, bit for bit."""
    n = 0
    for kind, name, seed, H, W, acc, cf, pad, n_low, ref in _rows(official):
        cols, n_c = fastmri_columns(kind, W, acc, cf, seed)
        if pad is not None:
            cols = zero_padding(cols, *pad)
        assert n_c == n_low, (kind, name, W, acc, cf)
        np.testing.assert_array_equal(np.flatnonzero(cols), ref, err_msg=str((kind, name, W, acc, cf, pad)))
        if n % 40 == 0:                                      # the tensor API gives the same columns on every row
            m = make_mask(kind, (H, W), acc, cf, seed=seed)
            assert m.shape == (H, W) and torch.equal(m, m[:1].expand_as(m))
            if pad is None:
                np.testing.assert_array_equal(np.flatnonzero(m[0].numpy()), ref)
        n += 1
    assert n == len(official["kind"])


@pytest.mark.parametrize("W,acc,cf,fastmri_n,int_n", [(368, 8, 0.04, 15, 14), (320, 4, 0.08, 26, 25),
                                                      (320, 8, 0.04, 13, 12)])
def test_centre_lines_round_not_truncate(W, acc, cf, fastmri_n, int_n):
    """The issue's cases: fastMRI's centre has round(cf * W) lines from (W - n + 1) // 2; invdiff's own int()."""
    for kind in FASTMRI_MASK_KINDS:
        cols, n_c = fastmri_columns(kind, W, acc, cf, seed=fastmri_seed("file1000001.h5"))
        start = (W - fastmri_n + 1) // 2
        assert n_c == fastmri_n and cols[start:start + fastmri_n].all(), kind
    assert int(cf * W) == int_n                                 # invdiff's families keep their own rule


def test_random_mask_draws_each_column_so_the_count_varies():
    counts = [int(fastmri_columns("fastmri-random", 368, 4, 0.08, fastmri_seed(f"file{1000000 + i}.h5"))[0].sum())
              for i in range(60)]
    assert len(set(counts)) > 10 and min(counts) < 92 < max(counts)       # W / R = 92 only on average
    assert abs(np.mean(counts) - 92) < 4                                   # sd of the mean ~ 1.0
    assert {int(make_mask("random", (1, 368), 4, seed=s).sum()) for s in range(5)} == {92}   # invdiff's: W // R


def test_seed_is_the_code_points_of_the_base_name():
    assert fastmri_seed("file1000001.h5") == tuple(map(ord, "file1000001.h5"))
    assert fastmri_seed(Path("/any/dir/file1000001.h5")) == fastmri_seed("file1000001.h5")
    a = fastmri_mask("fastmri-random", (2, 368), 4, seed=fastmri_seed("file1000001.h5"))
    b = fastmri_mask("fastmri-random", (2, 368), 4, seed=fastmri_seed("file1000002.h5"))
    assert not torch.equal(a, b)
    state = np.random.get_state()[1].copy()
    fastmri_mask("fastmri-equispaced-fraction", (2, 320), 4, seed=3)
    assert np.array_equal(np.random.get_state()[1], state)             # numpy's global RNG is left alone


def test_old_invdiff_families_are_unchanged():
    """Column indices of invdiff's own masks, pinned (CRC-32 of the int64 index list) from before this change."""
    pinned = {("equispaced", 368, 4, 7): 1715523588, ("equispaced", 320, 8, 123): 3516904909,
              ("equispaced", 396, 4, 2151663471): 2216549417, ("random", 368, 4, 7): 2005049930,
              ("random", 320, 8, 123): 3383431662, ("random", 396, 4, 2151663471): 3845805632,
              ("gaussian", 368, 4, 7): 542217053, ("gaussian", 320, 8, 123): 275867471,
              ("gaussian", 396, 4, 2151663471): 331487240}
    for (kind, W, acc, seed), crc in pinned.items():
        idx = make_mask(kind, (1, W), acc, seed=seed)[0].nonzero().flatten().numpy().astype(np.int64)
        assert zlib.crc32(idx.tobytes()) == crc, (kind, W, acc, seed)
    assert MASK_KINDS == ("equispaced", "random", "gaussian", "poisson", "poisson-1d")
    assert seed_for_file("file1000001.h5") == 2151663471


@pytest.mark.parametrize("call,exc,words", [
    (lambda: fastmri_columns("fastmri-equispaced", 320, 4.5, 0.08), ValueError, "'acceleration'.*integer"),
    (lambda: fastmri_columns("fastmri-magic", 320, 2.5, 0.08), ValueError, "'acceleration'.*integer"),
    (lambda: fastmri_columns("fastmri-random", 320, 10, 0.16), ValueError, "'center_fraction'"),
    (lambda: fastmri_columns("fastmri-equispaced-fraction", 368, 10, 0.16), ValueError, "'center_fraction'"),
    (lambda: fastmri_columns("fastmri-magic-fraction", 276, 8, 0.16), ValueError, "'center_fraction'"),
    (lambda: fastmri_columns("fastmri-magic-fraction", 16, 12, 0.04), ValueError, "'acceleration'"),
    (lambda: fastmri_columns("fastmri-random", 16, 2, 0.99), ValueError, "'center_fraction'"),
    (lambda: fastmri_columns("fastmri-spiral", 16, 2, 0.1), ValueError, "'kind'"),
    (lambda: fastmri_columns("fastmri-random", 320, 4, 0.08, seed=-1), ValueError, "'seed'"),
    (lambda: fastmri_columns("fastmri-random", 320, 4, 0.08, seed=2 ** 32), ValueError, "'seed'"),
    (lambda: fastmri_columns("fastmri-random", 320, 4, 0.08, seed="file1.h5"), TypeError, "'seed'"),
    (lambda: fastmri_columns("fastmri-random", 320, 4, 0.08, seed=()), ValueError, "'seed'"),
    (lambda: fastmri_seed(3), TypeError, "'fname'"),
    (lambda: fastmri_columns("fastmri-random", 0, 4, 0.08), ValueError, "'num_cols'"),
    (lambda: fastmri_columns("fastmri-random", 320.0, 4, 0.08), TypeError, "'num_cols'"),
    (lambda: fastmri_columns("fastmri-random", 320, 0.5, 0.08), ValueError, "'acceleration'"),
    (lambda: fastmri_columns("fastmri-random", 320, 4, 1.5), ValueError, "'center_fraction'"),
    (lambda: zero_padding(np.ones(8), -2, 6), ValueError, "'padding_left'"),
    (lambda: zero_padding(np.ones(8), 5, 3), ValueError, "'padding_right'"),
    (lambda: zero_padding(np.ones(8), 1.5, 6), TypeError, "'padding_left'"),
])
def test_bad_arguments_one_clear_error(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


def test_equispaced_fraction_with_the_centre_as_whole_budget_is_the_centre():
    cols, n_c = fastmri_columns("fastmri-equispaced-fraction", 48, 4, 0.25, seed=0)   # 12 * 4 == 48
    assert n_c == 12 and np.flatnonzero(cols).tolist() == list(range(18, 30))


# ------------------------------------------------------------------------------------------------
# fastMRI files: default masks, per-file seeding, padding
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fm")
    knee = write_synthetic_fastmri(d / "file1000007.h5", n_slices=2, coils=2, shape=(64, 72), seed=1,
                                   acquisition="CORPD_FBK")
    brain = write_synthetic_fastmri(d / "file_brain_AXT2_200_2000019.h5", n_slices=2, coils=2, shape=(64, 80),
                                    seed=2, acquisition="AXT2")
    padded = write_synthetic_fastmri(d / "file_brain_AXFLAIR_201_6002.h5", n_slices=1, coils=2, shape=(64, 80),
                                     seed=3, acquisition="AXFLAIR")
    with h5py.File(padded, "a") as f:
        f.attrs["padding_left"] = np.int64(7)                 # overrides the header's 0; right stays the header's
    test = write_synthetic_fastmri(d / "file_test_knee.h5", n_slices=1, coils=2, shape=(64, 72), seed=4,
                                   kind="test", acquisition="CORPD_FBK")
    with h5py.File(test, "a") as f:
        f.attrs["padding_left"], f.attrs["padding_right"] = 5, 66
    return {"knee": knee, "brain": brain, "padded": padded, "test": test}


def test_default_masks_are_fastmris_per_anatomy(files):
    knee, brain = inspect_fastmri(files["knee"]), inspect_fastmri(files["brain"])
    assert default_mask_kind(knee) == "fastmri-random" and default_mask_kind(brain) == "fastmri-equispaced-fraction"
    for info, kind, W in ((knee, "fastmri-random", 72), (brain, "fastmri-equispaced-fraction", 80)):
        for acc in (4, 8):
            cols = column_mask(info, acceleration=acc)                           # kind="auto"
            ref, _ = fastmri_columns(kind, W, acc, None, tuple(map(ord, info.fname)))
            np.testing.assert_array_equal(cols.numpy(), ref.astype(np.float32))
    assert torch.equal(column_mask(knee, "random", 4),                         # invdiff's own: CRC-32 seed
                       make_mask("random", (1, 72), 4, seed=seed_for_file(knee.fname))[0])
    assert torch.equal(column_mask(knee, "fastmri-magic", 4, seed=11),
                       fastmri_mask("fastmri-magic", (1, 72), 4, seed=11)[0])


def test_padding_attributes_override_the_header_and_zero_the_mask(files):
    info = inspect_fastmri(files["padded"])
    assert info.header["padding_left"] == 0 and info.header["padding_right"] == 80
    assert info.padding == (7, 80)
    cols = column_mask(info, "fastmri-equispaced", 4, 0.08)
    ref, _ = fastmri_columns("fastmri-equispaced", 80, 4, 0.08, fastmri_seed(info.fname))
    assert ref[:7].any()                                     # the padding really removes sampled columns here
    np.testing.assert_array_equal(cols.numpy(), zero_padding(ref, 7, 80).astype(np.float32))
    assert cols[:7].sum() == 0 and torch.equal(cols[7:], torch.from_numpy(ref[7:].astype(np.float32)))
    np.testing.assert_array_equal(column_mask(info, "fastmri-equispaced", 4, 0.08, padding=False).numpy(),
                                  ref.astype(np.float32))
    t = inspect_fastmri(files["test"])                       # a test file's own mask is zeroed there too
    fm = np.ones(72, np.float32)
    m = column_mask(t, file_mask=fm)
    assert m[:5].sum() == 0 and m[66:].sum() == 0 and m[5:66].all()
    info.attrs["padding_left"] = -3                          # fastMRI's slice would zero all but 3 columns
    with pytest.raises(DataFileError, match="padding"):
        column_mask(info)


def test_slice_dataset_auto_masks(files):
    ds = FastMRISliceDataset([files["knee"], files["brain"]], mask_kind="auto", acceleration=8)
    k, _, meta = ds[0]
    ref, _ = fastmri_columns("fastmri-random", 72, 8, 0.04, fastmri_seed("file1000007.h5"))
    np.testing.assert_array_equal(meta["mask"].numpy(), ref.astype(np.float32))
    assert torch.all(k[..., meta["mask"] == 0] == 0) and torch.equal(ds[1][2]["mask"], meta["mask"])
    with pytest.raises(ValueError, match="'mask_kind'"):
        FastMRISliceDataset(files["knee"], mask_kind="poisson")


def test_reconstruct_uses_and_records_the_fastmri_mask(tmp_path, files, capsys):
    from invdiff.cli import main

    out = tmp_path / "out"
    rc = main(["reconstruct", str(files["knee"]), "--solver", "adjoint", "--out", str(out), "--no-progress",
               "--center-fraction", "0.2"])                  # 14 centre lines: enough for ESPIRiT
    assert rc == 0, capsys.readouterr().err
    ref, _ = fastmri_columns("fastmri-random", 72, 4, 0.2, fastmri_seed("file1000007.h5"))
    with h5py.File(out / "file1000007.h5") as f:
        assert f.attrs["mask"] == "fastmri-random"
        assert f.attrs["realised_acceleration"] == pytest.approx(72 / ref.sum())
