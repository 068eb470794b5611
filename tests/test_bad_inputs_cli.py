"""Catalogue of bad inputs across the command line and the Python API (issue 16).

Every case must give one clear message naming the argument and what was expected, exit code 2 (usage,
configuration or input errors found before any work), no traceback, and write nothing: the output folder is
absent (or unchanged). CLI cases run in-process through ``invdiff.cli.main`` (argparse's own errors end in
``SystemExit(2)``).
"""
import errno
import shutil

import h5py
import numpy as np
import pytest
import torch

import invdiff
from invdiff.cli import main
from invdiff.datasets.synthetic_fastmri import write_synthetic_fastmri


# ------------------------------------------------------------------------------------------------
# inputs (written once)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    np.save(d / "img.npy", rng.random((2, 32, 32)).astype(np.float32))
    np.save(d / "img64.npy", rng.random((64, 64)).astype(np.float32))
    np.save(d / "tiny.npy", rng.random((3, 3)).astype(np.float32))
    np.save(d / "wide.npy", rng.random((8, 4000)).astype(np.float32))
    np.save(d / "four_d.npy", rng.random((2, 2, 16, 16)).astype(np.float32))
    np.save(d / "complex.npy", (rng.random((16, 16)) + 1j).astype(np.complex64))
    (d / "notes.txt").write_text("not an image")
    (d / "corrupt.h5").write_bytes(b"this is not HDF5" * 10)
    (d / "empty").mkdir()
    (d / "a_file").write_text("x")
    write_synthetic_fastmri(d / "sc.h5", n_slices=2, kind="singlecoil", shape=(32, 32))
    write_synthetic_fastmri(d / "mc.h5", n_slices=1, coils=4, shape=(64, 64))       # 5 centre lines at 4x
    write_synthetic_fastmri(d / "big.h5", n_slices=1, kind="singlecoil", shape=(128, 128))
    write_synthetic_fastmri(d / "test8x.h5", n_slices=1, coils=4, shape=(64, 64), kind="test",
                            mask_kind="fastmri-random", acceleration=8)          # its own mask: a few centre lines
    shutil.copy(d / "sc.h5", d / "badshape.h5")
    with h5py.File(d / "badshape.h5", "r+") as f:                                    # target 32x32 -> 24x24
        t = f["reconstruction_esc"][:, 4:28, 4:28]
        del f["reconstruction_esc"]
        f.create_dataset("reconstruction_esc", data=t)
    return d


def cli(args, capsys):
    """(exit code, stdout, stderr) of ``invdiff ARGS`` run in-process."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def check_one_clear_error(rc, err, words, code=2):
    assert rc == code, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and ("error:" in lines[-1] or "error:" in err), err
    for w in words:
        assert w in err, f"{w!r} not in {err!r}"


# ------------------------------------------------------------------------------------------------
# invdiff reconstruct: configuration (checked once, before any input is read)
# ------------------------------------------------------------------------------------------------
RECON_CONFIG = [
    (["--acceleration", "0"], ["'--acceleration'", ">= 1"]),
    (["--acceleration", "-4"], ["'--acceleration'", ">= 1"]),
    (["--acceleration", "nan"], ["'--acceleration'", "a number"]),
    (["--noise", "-0.1"], ["'--noise'", ">= 0"]),
    (["--noise", "inf"], ["'--noise'", ">= 0"]),
    (["--views", "0"], ["'--views'", "integer >= 1"]),
    (["--set", "views=2.5"], ["'--views'", "integer"]),
    (["--keep", "1.5"], ["'--keep'", "<= 1"]),
    (["--keep", "0"], ["'--keep'", "> 0"]),
    (["--set", "seed=abc"], ["'--seed'", "an integer", "abc"]),
    (["--set", "seed=-1"], ["'--seed'", ">= 0"]),
    (["--seed", "abc"], ["--seed", "invalid int value"]),
    (["--center-fraction", "1.5"], ["'--center-fraction'", "< 1"]),
    (["--center-fraction", "0"], ["'--center-fraction'", "> 0"]),
    (["--angle-range", "0"], ["'--angle-range'", "> 0"]),
    (["--angle-range", "400"], ["'--angle-range'", "<= 360"]),
    (["--set", "batch_slices=0"], ["'batch_slices'", ">= 1"]),
    (["--set", "n_samples=0"], ["'n_samples'", ">= 1"]),
    (["--set", "n_samples=2.5"], ["'n_samples'", "integer"]),
    (["--set", "threads=0"], ["'threads'", ">= 1"]),
    (["--set", "coils=-1"], ["'coils'", ">= 0"]),
    (["--set", "blur_std=0"], ["'blur_std'", "> 0"]),
    (["--set", "blur_size=0"], ["'blur_size'", ">= 1"]),
    (["--set", "box_frac=1.5"], ["'box_frac'", "< 1"]),
    (["--set", "inpaint=diamond"], ["'inpaint'", "random"]),
    (["--set", "npy=volume"], ["'npy'", "sinogram"]),
    (["--set", "image_size=1"], ["'image_size'", ">= 2"]),
    (["--set", "espirit_kernel=0"], ["'espirit_kernel'", ">= 1"]),
    (["--set", "espirit_calib=4"], ["'espirit_calib'", ">= 12"]),
    (["--set", "write_dicom=maybe"], ["'write_dicom'", "true or false"]),
    (["--set", "strict=1"], ["'--strict'", "true or false"]),
    (["--set", "coil_support=maybe"], ["'coil_support'", "auto, true or false", "maybe"]),
    (["--set", "noise_floor=maybe"], ["'noise_floor'", "true or false", "maybe"]),
    (["--max-memory", "0"], ["'--max-memory'", "> 0"]),
    (["--max-memory", "-1"], ["'--max-memory'", "> 0"]),
    (["--task", "bogus"], ["'--task'", "inpainting"]),
    (["--mask", "bogus"], ["'--mask'", "fastmri-random"]),
    (["--solver", "nope"], ["'--solver'", "tv"]),
    (["--solver", "dds"], ["'--prior'", "ct-phantom-64"]),
    (["--solver", "dds", "--prior", "no-such-prior"], ["'--prior'", "no-such-prior"]),
    (["--solver", "tv", "--set", "solver.bogus=1"], ["bogus", "tv"]),
    (["--set", "bogus=1"], ["'--set'", "unknown key", "bogus"]),
    (["--set", "noequals"], ["'--set'", "key=value"]),
    (["--config", "missing.cfg"], ["'--config'", "missing.cfg"]),
    (["--solver", "tv", "--set", "n_samples=2"], ["'n_samples'", "deterministic"]),
    (["--solver", "dds", "--prior", "mri-brainphantom-64", "--task", "ct"], ["'--prior'", "1 channel"]),
]


@pytest.mark.parametrize("args,words", RECON_CONFIG, ids=[" ".join(a) for a, _ in RECON_CONFIG])
def test_reconstruct_config_errors(data, tmp_path, capsys, args, words):
    out = tmp_path / "out"
    rc, _, err = cli(["reconstruct", data / "img.npy", "--out", out, *args], capsys)
    check_one_clear_error(rc, err, words)
    assert not out.exists()


def test_num_steps_zero_checked_before_any_input(data, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = cli(["reconstruct", data / "img.npy", "--out", out, "--solver", "dds", "--prior", "ct-phantom-64",
                      "--task", "ct", "--set", "solver.num_steps=0"], capsys)
    check_one_clear_error(rc, err, ["'num_steps'", "an integer in [1,", "received int 0"])
    assert not out.exists()


OPTION_VALUES = [
    (["--solver", "tv", "--set", "solver.lam=-1"], ["'lam'", "tv"]),
    (["--solver", "tv", "--set", "solver.n_iter=abc"], ["'n_iter'", "an integer"]),
    (["--solver", "dds", "--prior", "ct-phantom-64", "--set", "solver.dc=bogus"], ["'dc'", "one of"]),
]


@pytest.mark.parametrize("args,words", OPTION_VALUES, ids=[" ".join(a) for a, _ in OPTION_VALUES])
def test_solver_option_values_checked_before_any_input(data, tmp_path, capsys, args, words):
    out = tmp_path / "out"
    rc, _, err = cli(["reconstruct", data / "img.npy", "--out", out, "--task", "ct", *args], capsys)
    check_one_clear_error(rc, err, words)
    assert not out.exists()


def test_bad_json_config(data, tmp_path, capsys):
    cfg = tmp_path / "bad.json"
    cfg.write_text("{not json")
    rc, _, err = cli(["reconstruct", data / "img.npy", "--out", tmp_path / "out", "--config", cfg], capsys)
    check_one_clear_error(rc, err, ["'--config'", "valid JSON"])
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# invdiff reconstruct: inputs (what their headers show, before any input is solved)
# ------------------------------------------------------------------------------------------------
RECON_INPUTS = [
    ([], ["'INPUT'", "at least one input"]),
    (["missing.npy"], ["'INPUT'", "an existing file or folder"]),
    (["notes.txt"], ["'INPUT'", ".npy"]),
    (["empty"], ["'INPUT'", "none in"]),
    (["tiny.npy"], ["tiny.npy", "at least 7x7", "3x3"]),
    (["wide.npy", "--task", "ct", "--solver", "fbp"], ["wide.npy", "square", "4000x4000", "ct_pad_square"]),
    (["four_d.npy"], ["four_d.npy", "expected a real image"]),
    (["complex.npy"], ["complex.npy", "expected a real image"]),
    (["corrupt.h5"], ["corrupt.h5"]),
    (["badshape.h5"], ["badshape.h5", "reconSpace", "check_target"]),
    (["mc.h5"], ["'--center-fraction'", "espirit_kernel", "5 lines"]),
    (["test8x.h5"], ["'espirit_kernel'", "file's own mask", "lines in the mask"]),
    (["sc.h5", "--max-memory", "1e-6"], ["sc.h5", "GiB", "--max-memory"]),
    (["sc.h5", "--task", "ct"], ["sc.h5", "--task mri"]),
    (["img.npy", "sc.h5"], ["'--solver'", "several tasks"]),
    (["wide.npy", "--task", "ct", "--solver", "fbp", "--set", "ct_pad_square=true", "--max-memory", "4"],
     ["wide.npy", "4000x4000", "GiB", "--max-memory"]),
    (["big.h5", "--solver", "dds", "--prior", "mri-brainphantom-64", "--strict"],
     ["'--strict'", "64x64", "128x128"]),
]


@pytest.mark.parametrize("inputs,words", RECON_INPUTS, ids=[" ".join(a) or "none" for a, _ in RECON_INPUTS])
def test_reconstruct_input_errors(data, tmp_path, capsys, inputs, words):
    out = tmp_path / "out"
    args, value = [], False
    for a in inputs:                       # file names -> paths in the data folder; flags and their values as is
        args.append(a if a.startswith("-") or value else data / a)
        value = a.startswith("-") and a != "--strict"
    rc, _, err = cli(["reconstruct", *args, "--out", out, "--no-progress"], capsys)
    check_one_clear_error(rc, err, words)
    assert not out.exists()


def test_reconstruct_out_errors(data, tmp_path, capsys):
    rc, _, err = cli(["reconstruct", data / "img.npy"], capsys)
    check_one_clear_error(rc, err, ["'--out'"])
    before = (data / "a_file").read_text()
    rc, _, err = cli(["reconstruct", data / "img.npy", "--out", data / "a_file"], capsys)
    check_one_clear_error(rc, err, ["'--out'", "an existing file"])
    assert (data / "a_file").read_text() == before


def test_unchanged_existing_output_folder(data, tmp_path, capsys):
    """A configuration error leaves an existing output folder exactly as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = cli(["reconstruct", data / "img.npy", "--out", out, "--noise", "-1"], capsys)
    check_one_clear_error(rc, err, ["'--noise'"])
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


# ------------------------------------------------------------------------------------------------
# invdiff bench, evaluate, synth-fastmri, train-prior
# ------------------------------------------------------------------------------------------------
OTHER_COMMANDS = [
    (["bench", "--tasks", "nope", "--solvers", "tv"], ["'--tasks'", "nope"]),
    (["bench", "--tasks", "ct-8view", "--solvers", "nope"], ["'--solvers'", "nope"]),
    (["bench", "--tasks", "ct-8view", "--solvers", "tv", "--n-images", "0"], ["'--n-images'", ">= 1"]),
    (["bench", "--tasks", "ct-8view", "--solvers", "tv", "--size", "4"], ["'--size'", ">= 8"]),
    (["bench", "--tasks", "ct-8view", "--solvers", "tv", "--set", "noise=-1"], ["'noise'", ">= 0"]),
    (["bench", "--tasks", "ct-8view", "--solvers", "tv", "--set", "strict=yes"], ["'strict'", "true or false"]),
    (["bench", "--tasks", "ct-8view", "--solvers", "tv", "--sweep", "nope.x=1,2"], ["'--sweep'", "SOLVER.OPTION"]),
    (["bench", "--tasks", "ct-8view", "--solvers", "tv", "--set", "sweep=5"], ["'sweep'", "SOLVER.OPTION"]),
    (["bench", "--tasks", "ct-8view", "--solvers", "tv", "--sweep", "dds.num_steps=10,20"],
     ["'--sweep'", "not in --solvers"]),
    (["bench", "--tasks", "ct-8view", "--solvers", "dds", "--size", "128", "--strict"],
     ["'--strict'", "64x64", "128x128"]),
    (["evaluate", "--targets", "{d}/sc.h5", "--predictions", "{d}/missing"], ["'--predictions'", "existing folder"]),
    (["evaluate", "--targets", "{d}/empty", "--predictions", "{d}/empty"], ["'--targets'", ".h5"]),
    (["evaluate", "--targets", "{d}/sc.h5", "--predictions", "{d}/empty", "--acceleration", "0"],
     ["'--acceleration'", ">= 1"]),
    (["evaluate", "--targets", "{d}/sc.h5", "--predictions", "{d}/empty", "--challenge", "knee"],
     ["--challenge", "invalid choice"]),
    (["synth-fastmri", "--n-files", "0"], ["'--n-files'", ">= 1"]),
    (["synth-fastmri", "--kind", "bogus"], ["'--kind'", "multicoil"]),
    (["synth-fastmri", "--shape", "4", "4"], ["'--shape'", ">= 8"]),
    (["synth-fastmri", "--mask", "bogus"], ["'--mask'", "fastmri-random"]),
    (["synth-fastmri", "--acceleration", "0.5"], ["'--acceleration'", ">= 1"]),
    (["synth-fastmri", "--center-fraction", "2"], ["'--center-fraction'", "< 1"]),
    (["train-prior", "--set", "nosuch=1"], ["nosuch"]),
    (["train-prior", "--steps", "-3"], ["steps"]),
    (["nosuchcommand"], ["invalid choice"]),
]


@pytest.mark.parametrize("args,words", OTHER_COMMANDS, ids=[" ".join(a[:3]) for a, _ in OTHER_COMMANDS])
def test_other_commands(data, tmp_path, capsys, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    args = [a.format(d=data) for a in args]
    if args[0] in ("bench", "synth-fastmri"):
        args += ["--out", str(out)]
    elif args[0] == "train-prior":
        args += ["--out", str(out), "--set", "progress=false"]
    elif args[0] == "evaluate":
        args += ["--json", str(out / "scores.json")]
    rc, _, err = cli(args, capsys)
    check_one_clear_error(rc, err, words)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# Python API
# ------------------------------------------------------------------------------------------------
def _ct_problem():
    op = invdiff.operators.CT(16, n_views=4)
    return op(torch.rand(1, 1, 16, 16)), op


def _api_cases():
    from invdiff.datasets import evaluate
    from invdiff.io_utils import atomic_write_text
    from invdiff.operators import CT, make_mask
    from invdiff.priors import check_prior_fits, load

    return [
        ("solve integer y", lambda d: invdiff.solve(torch.ones(1, 1, 16, 4, dtype=torch.int64), _ct_problem()[1],
                                                     solver="fbp"), TypeError, ["'y'", "floating-point"]),
        ("solve unknown solver", lambda d: invdiff.solve(*_ct_problem(), solver="nope"), ValueError,
         ["'solver'", "tv"]),
        ("solve strict not bool", lambda d: invdiff.solve(*_ct_problem(), solver="fbp", strict="yes"), TypeError,
         ["'strict'", "True or False"]),
        ("solve NaN y", lambda d: invdiff.solve(torch.full((1, 1, 16, 4), float("nan")), _ct_problem()[1],
                                                solver="fbp"), ValueError, ["'y'", "finite"]),
        ("CT size 0", lambda d: CT(0), ValueError, ["'img_size'"]),
        ("CT non-square", lambda d: CT((1, 8, 16)), ValueError, ["'img_size'", "square"]),
        ("CT views 0", lambda d: CT(16, n_views=0), ValueError, ["'n_views'", ">= 1"]),
        ("mask acceleration 0", lambda d: make_mask("random", (16, 16), 0), ValueError, ["acceleration"]),
        ("mask kind", lambda d: make_mask("nope", (16, 16), 4), ValueError, ["'kind'", "fastmri-random"]),
        ("prior unknown", lambda d: load("no-such-prior"), ValueError, ["no-such-prior"]),
        ("size guard strict", lambda d: check_prior_fits(load("ct-phantom-64"), (1, 320, 320), strict=True),
         ValueError, ["64x64", "320x320"]),
        ("evaluate empty folder", lambda d: evaluate(d / "empty", d / "empty"), ValueError, ["'targets'"]),
        ("evaluate missing predictions", lambda d: evaluate(d / "sc.h5", d / "nope"), ValueError,
         ["'predictions_dir'"]),
        ("synthetic shape", lambda d: write_synthetic_fastmri(d / "x.h5", shape=(4, 4)), ValueError, ["'shape'"]),
        ("synthetic kind", lambda d: write_synthetic_fastmri(d / "x.h5", kind="bogus"), ValueError, ["'kind'"]),
        ("metrics of 3x3 slices", lambda d: invdiff.metrics.fastmri_metrics(np.ones((1, 3, 3)), np.ones((1, 3, 3)),
                                                                           crop=False),
         ValueError, ["'target_volume'", "7x7", "3x3"]),
        ("atomic write to a file's child", lambda d: atomic_write_text(d / "a_file" / "x.txt", "x"), OSError, []),
    ]


@pytest.mark.parametrize("case", range(17))
def test_api_errors(data, case):
    name, fn, exc, words = _api_cases()[case]
    before = sorted(p.name for p in data.iterdir())
    with pytest.raises(exc) as e:
        fn(data)
    for w in words:
        assert w in str(e.value), (name, str(e.value))
    assert sorted(p.name for p in data.iterdir()) == before, name


def test_catalogue_size():
    n = (len(RECON_CONFIG) + 2 + len(OPTION_VALUES) + len(RECON_INPUTS) + 2 + 1 + len(OTHER_COMMANDS) + len(_api_cases()))
    assert n >= 60, n


# ------------------------------------------------------------------------------------------------
# a full disk (mocked ENOSPC at the writer)
# ------------------------------------------------------------------------------------------------
def test_disk_full_is_one_message_and_no_partial_output(data, tmp_path, capsys, monkeypatch):
    from conftest import patch_full_disk
    from invdiff import io_utils

    # the output img64.npy: half written, then ENOSPC
    real = patch_full_disk(monkeypatch, "atomic_write_bytes", lambda path: str(path).endswith("img64.npy"))
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(data / "img.npy", src / "a.npy")
    shutil.copy(data / "img64.npy", src / "img64.npy")
    out = tmp_path / "out"
    rc, _, err = cli(["reconstruct", src, "--out", out, "--solver", "adjoint", "--no-progress"], capsys)
    assert rc == 3 and "Traceback" not in err
    assert err.count("no space left") == 1 and "re-run" in err
    names = sorted(p.name for p in out.rglob("*"))
    assert "a.npy" in names and "img64.npy" not in names           # the done input kept, nothing partial
    assert not [n for n in names if n.startswith(".")]              # no temporary files
    assert not (out / "records" / "img64.npy.json").exists()
    assert np.load(out / "a.npy").shape == (2, 32, 32)
    monkeypatch.setattr(io_utils, "atomic_write_bytes", real)      # space again: the same command resumes
    rc, _, err = cli(["reconstruct", src, "--out", out, "--solver", "adjoint", "--no-progress"], capsys)
    assert rc == 0, err
    assert np.load(out / "img64.npy").shape == (64, 64)


def test_disk_full_recognised_in_library_wrappers():
    from invdiff.io_utils import DiskFullError, is_disk_full

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(OSError("16384 requested and 14304 written"))                 # numpy's tofile
    assert is_disk_full(OSError("Can't synchronously write data (file write failed: errno = 28, ...)"))  # h5py
    assert is_disk_full(DiskFullError(errno.ENOSPC, "x"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("No space left"))
