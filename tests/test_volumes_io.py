"""Volumes in and out: NIfTI, DICOM series (sorting, geometry, mismatches), sinogram files, images."""
import os

import nibabel as nib
import numpy as np
import pydicom
import pytest

from invdiff.datasets.fastmri import DataFileError
from invdiff.datasets.volumes import (Volume, image_size_for_detectors, read_dicom_series, read_image, read_nifti,
                                      read_sinogram, read_volume, simulate_sinogram, write_array, write_dicom_series,
                                      write_nifti, write_png, write_sinogram)

AFFINE = np.array([[0.8, 0.0, 0.0, -10.0],
                   [0.0, 0.9, 0.0, 5.0],
                   [0.0, 0.0, 2.5, 30.0],
                   [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture
def vol():
    return np.random.default_rng(0).random((5, 12, 10)).astype(np.float32)


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_nifti_roundtrip_keeps_data_and_affine(tmp_path, vol, name):
    p = write_nifti(tmp_path / name, vol, AFFINE)
    v = read_nifti(p)
    np.testing.assert_array_equal(v.data, vol)
    np.testing.assert_allclose(v.affine, AFFINE, atol=1e-6)
    assert v.spacing == pytest.approx((2.5, 0.9, 0.8))
    # the axis convention: data[k, j, i] is NIfTI voxel (i, j, k)
    arr = np.asarray(nib.load(str(p)).dataobj)
    assert arr.shape == (10, 12, 5) and arr[3, 7, 2] == vol[2, 7, 3]
    if name.endswith(".gz"):
        assert p.read_bytes()[:2] == b"\x1f\x8b"
    assert sorted(os.listdir(tmp_path)) == [name]                           # atomic: no temporary file left


def test_nifti_errors_name_the_file(tmp_path, vol):
    p = write_nifti(tmp_path / "v.nii.gz", vol, AFFINE)
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DataFileError, match="trunc.nii.gz.*NIfTI"):
        read_nifti(bad)
    p4 = tmp_path / "t.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.float32), np.eye(4)), str(p4))
    with pytest.raises(DataFileError, match="4D"):
        read_nifti(p4)


def test_dicom_roundtrip_and_sorting(tmp_path, vol):
    data = vol * 1000 - 500
    d = write_dicom_series(tmp_path / "series", data, AFFINE)
    files = sorted(d.iterdir())
    assert len(files) == 5
    # scramble file names and instance numbers: sorting must use the positions along the slice normal
    rng = np.random.default_rng(1)
    for f, new in zip(files, rng.permutation(len(files))):
        ds = pydicom.dcmread(str(f))
        ds.InstanceNumber = int(rng.integers(1, 100))
        ds.save_as(str(d / f"x{new:02d}.dcm"))
        f.unlink()
    v = read_volume(d)
    step = (data.max() - data.min()) / 65535
    np.testing.assert_allclose(v.data, data, atol=step)
    np.testing.assert_allclose(v.affine, AFFINE, atol=1e-5)
    assert v.meta["format"] == "dicom" and len(v.meta["files"]) == 5


def test_dicom_without_positions_sorts_by_instance_number(tmp_path, vol):
    d = write_dicom_series(tmp_path / "s", vol, AFFINE)
    for f in sorted(d.iterdir()):
        ds = pydicom.dcmread(str(f))
        k = ds.InstanceNumber
        del ds.ImagePositionPatient
        ds.save_as(str(d / f"z{9 - k}.dcm"))                               # reverse the name order
        f.unlink()
    v = read_dicom_series(d)
    np.testing.assert_allclose(v.data, vol, atol=1.01 / 65535)


@pytest.mark.parametrize("problem,words", [("rows", "slice shape"), ("spacing", "PixelSpacing"),
                                           ("gap", "uneven slice spacing"), ("series", "SeriesInstanceUID")])
def test_mismatched_dicom_series(tmp_path, vol, problem, words):
    d = write_dicom_series(tmp_path / "s", vol, AFFINE)
    f = sorted(d.iterdir())[2]
    ds = pydicom.dcmread(str(f))
    if problem == "rows":
        ds.Rows, ds.Columns = 6, 10
        ds.PixelData = np.zeros((6, 10), np.uint16).tobytes()
    elif problem == "spacing":
        ds.PixelSpacing = ["1.5", "0.8"]
    elif problem == "gap":
        ds.ImagePositionPatient = [str(float(v) + (1.0 if i == 2 else 0.0)) for i, v in enumerate(ds.ImagePositionPatient)]
    else:
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(str(f))
    with pytest.raises(DataFileError) as e:
        read_dicom_series(d)
    assert "mismatched DICOM series" in str(e.value) and words in str(e.value)


def test_corrupt_dicom_names_the_file(tmp_path, vol):
    d = write_dicom_series(tmp_path / "s", vol, AFFINE)
    f = sorted(d.iterdir())[1]
    f.write_bytes(f.read_bytes()[:300])
    with pytest.raises(DataFileError, match=f.name):
        read_dicom_series(d)


def test_sinogram_simulate_write_read(tmp_path):
    from invdiff.datasets import ct_phantoms

    x = ct_phantoms([1, 2], 32)[:, 0].numpy()
    s = simulate_sinogram(Volume(x, AFFINE), n_views=16)
    assert s.data.shape == (2, 46, 16) and s.image_size == 32
    np.testing.assert_allclose(s.angles, np.arange(16) * 180 / 16)
    lim = simulate_sinogram(x, n_views=8, angle_range=90.0, sigma=0.01, seed=3)
    assert lim.angles.max() < 90 and not np.allclose(lim.data, simulate_sinogram(x, 8, 90.0).data)
    p = write_sinogram(tmp_path / "s.h5", s)
    r = read_sinogram(p)
    np.testing.assert_array_equal(r.data, s.data)
    np.testing.assert_allclose(r.angles, s.angles)
    assert r.image_size == 32 and np.allclose(r.affine, AFFINE)
    np.save(tmp_path / "s.npy", s.data[0])
    r2 = read_sinogram(tmp_path / "s.npy")                                  # bare array: size from the detectors
    assert r2.data.shape == (1, 46, 16) and r2.image_size == 32
    with pytest.raises(DataFileError, match="4 view angles"):
        read_sinogram(tmp_path / "s.npy", angles=[0, 45, 90, 135])
    # non-square slices are zero-padded to a square
    assert simulate_sinogram(np.ones((1, 20, 32), np.float32), 4).image_size == 32
    assert [image_size_for_detectors(n) for n in (46, 91, 23)] == [32, 64, 16]


def test_images_and_arrays(tmp_path):
    img = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(64, 48)
    write_png(tmp_path / "a.png", img, 0.0, 1.0)
    back = read_image(tmp_path / "a.png")
    assert back.shape == (64, 48) and np.abs(back - img).max() <= 0.5 / 255 + 1e-6
    write_array(tmp_path / "a.npy", img)
    np.testing.assert_array_equal(read_image(tmp_path / "a.npy"), img)
    np.save(tmp_path / "c.npy", np.zeros((4, 4), np.complex64))
    with pytest.raises(DataFileError, match="c.npy"):
        read_image(tmp_path / "c.npy")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataFileError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(DataFileError, match="not a volume"):
        read_volume(tmp_path / "a.npy")
