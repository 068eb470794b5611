"""Issue 16 items 2-5 and 9: a real full disk, fastMRI targets that disagree with their k-space, --solver auto,
invdiff evaluate / synth-fastmri, synthetic test masks identical to fastMRI's, the short train-prior summary."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import pytest

from invdiff.cli import main
from invdiff.datasets.synthetic_fastmri import write_synthetic_fastmri


def cli(args, capsys):
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {d}"],
                           capture_output=True)
        return r.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unprivileged user+mount namespaces (unshare -rm)")
@pytest.mark.parametrize("size", ["8k", "40k"])
def test_real_full_disk_clean_exit(tmp_path, size):
    """A 8-40 KB tmpfs as --out (in a user namespace): exit 3, one message, no traceback, no segfault (139),
    nothing partial (every file there is complete)."""
    write_synthetic_fastmri(tmp_path / "sc.h5", n_slices=4, kind="singlecoil", shape=(128, 128))
    full = tmp_path / "full"
    full.mkdir()
    script = (f"mount -t tmpfs -o size={size} tmpfs {full} && {sys.executable} -m invdiff.cli reconstruct "
              f"{tmp_path / 'sc.h5'} --out {full / 'o'} --no-progress; rc=$?; "
              f"ls -A {full / 'o'} {full / 'o' / 'records'}; exit $rc")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.count("no space left") == 1, r.stderr
    listed = r.stdout.split()
    assert "sc.h5" not in listed and not [n for n in listed if n.startswith(".") and n.endswith(".part")]


def test_target_inconsistent_with_kspace_is_refused(tmp_path, capsys):
    """A target that is not the image of the file's own fully sampled k-space (here: flipped) is refused, with the
    relative error; --set check_target=false scores it anyway (and then gives the poor score it deserves)."""
    good = write_synthetic_fastmri(tmp_path / "in" / "good.h5", n_slices=2, kind="singlecoil", shape=(32, 32))
    bad = tmp_path / "in" / "bad.h5"
    shutil.copy(good, bad)
    with h5py.File(bad, "r+") as f:
        f["reconstruction_esc"][...] = f["reconstruction_esc"][()][:, ::-1, ::-1].copy()
    out = tmp_path / "out"
    rc, _, err = cli(["reconstruct", tmp_path / "in", "--out", out, "--no-progress", "--solver", "adjoint"], capsys)
    assert rc == 1 and "Traceback" not in err
    assert "bad.h5" in err and "relative error" in err and "check_target=false" in err
    assert (out / "good.h5").is_file() and not (out / "bad.h5").exists()
    rc, _, err = cli(["reconstruct", bad, "--out", tmp_path / "out2", "--no-progress", "--solver", "adjoint",
                      "--set", "check_target=false"], capsys)
    assert rc == 0, err
    index = json.loads((tmp_path / "out2" / "index.json").read_text())
    assert index["records"][0]["metrics"]["PSNR"] < 25


def test_solver_auto_and_list(tmp_path, capsys):
    np.save(tmp_path / "im.npy", np.random.default_rng(0).random((16, 16)).astype(np.float32))
    rc, out, _ = cli(["reconstruct", "--list-solvers"], capsys)
    assert rc == 0 and "tv" in out and "auto for" in out and "invdiff solvers" in out
    rc, _, err = cli(["reconstruct", tmp_path / "im.npy", "--out", tmp_path / "o", "--no-progress",
                      "--set", "solver.n_iter=5"], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "o" / "config.json").read_text())["solver"] == "tv"


def test_help_examples_fit_the_data(capsys):
    with pytest.raises(SystemExit):
        main(["reconstruct", "--help"])
    text = capsys.readouterr().out
    for line in text.splitlines():
        if "knee" in line and "--prior" in line:
            assert "brainphantom-64" not in line and "ct-phantom-64" not in line, line
    assert "--strict" in text and "--list-solvers" in text and "assumes" in text


def test_synth_fastmri_and_evaluate_commands(tmp_path, capsys):
    rc, out, err = cli(["synth-fastmri", "--out", tmp_path / "val", "--n-files", "2", "--kind", "singlecoil",
                        "--shape", "32", "32", "--slices", "1"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "val").iterdir()) == ["file_synth_000.h5", "file_synth_001.h5"]
    rc, _, err = cli(["reconstruct", tmp_path / "val", "--out", tmp_path / "rec", "--solver", "adjoint",
                      "--no-progress"], capsys)
    assert rc == 0, err
    rc, out, err = cli(["evaluate", "--targets", tmp_path / "val", "--predictions", tmp_path / "rec", "--json",
                        tmp_path / "scores.json"], capsys)
    assert rc == 0, err
    scores = json.loads((tmp_path / "scores.json").read_text())
    index = json.loads((tmp_path / "rec" / "index.json").read_text())
    for rec in index["records"]:   # the command scores exactly as reconstruct's own fastMRI protocol did
        assert abs(scores["per_volume"][rec["output"]]["PSNR"] - rec["metrics"]["PSNR"]) < 1e-4
    assert "file_synth_000.h5" in out and "summary" in out


@pytest.mark.parametrize("family", ["fastmri-random", "fastmri-equispaced-fraction"])
def test_synthetic_test_masks_are_fastmris(tmp_path, family):
    from invdiff.operators.fastmri_masks import center_lines, fastmri_columns, fastmri_seed

    path = write_synthetic_fastmri(tmp_path / "file1000123_v2.h5", n_slices=1, coils=2, shape=(40, 368),
                                   kind="test", mask_kind=family, acceleration=8)
    with h5py.File(path, "r") as f:
        mask = f["mask"][()]
        n_low = int(f.attrs["num_low_frequency"])
    cols, n_c = fastmri_columns(family, 368, 8, 0.04, seed=fastmri_seed(path.name))
    assert np.array_equal(mask, cols.astype(bool))
    assert n_low == n_c == center_lines(368, 0.04) == 15     # round(0.04 * 368), not int()


def test_train_prior_prints_a_short_summary(tmp_path, capsys):
    argv = ["train-prior", "--name", "tiny", "--data", "ct", "--size", "16", "--base-channels", "8",
            "--channel-mult", "1,2", "--emb-dim", "16", "--batch-size", "4", "--steps", "2", "--out", tmp_path,
            "--weights-dir", tmp_path / "w", "--set", "eval_images=2", "--set", "eval_sigmas=0.1",
            "--set", "sample_steps=2", "--set", "n_samples=2", "--set", "progress=false"]
    rc, out, err = cli(argv, capsys)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert 2 <= len(lines) <= 4 and "exported" in lines[0] and "export.json" in lines[-1], out
    full = json.loads((tmp_path / "tiny" / "export.json").read_text())
    assert full["step"] == 2 and full["eval"]["rows"][0]["sigma"] == 0.1


def test_bench_disk_full_is_one_message(tmp_path, capsys, monkeypatch):
    """bench: a full disk while a row is written stops the run with exit 3 and one message; no partial row file."""
    from conftest import patch_full_disk

    patch_full_disk(monkeypatch, "atomic_write_text", lambda path: "rows" in str(path))
    out = tmp_path / "b"
    rc, _, err = cli(["bench", "--tasks", "inpainting-random", "--solvers", "adjoint", "--n-images", "1", "--size",
                      "16", "--out", out, "--no-progress"], capsys)
    assert rc == 3 and "Traceback" not in err and err.count("no space left") == 1, err
    assert not list((out / "rows").rglob("*.json")) if (out / "rows").exists() else True
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_train_prior_disk_full_exit_code(tmp_path, capsys, monkeypatch):
    import errno

    import invdiff.training.cli as tcli

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tcli, "train", full)
    rc, _, err = cli(["train-prior", "--name", "t", "--data", "ct", "--size", "16", "--steps", "1", "--out", tmp_path,
                      "--export", "never"], capsys)
    assert rc == 3 and err.count("no space left") == 1 and "Traceback" not in err, err
