"""`invdiff reconstruct`: inputs of every kind, clear errors, per-input failures, resumability (kill -9), torchrun."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from invdiff.cli import main
from invdiff.datasets import ct_phantoms
from invdiff.datasets.volumes import (Volume, read_dicom_series, read_nifti, simulate_sinogram, write_array,
                                      write_nifti, write_png, write_sinogram)
from invdiff.priors import available as priors_available

AFFINE = np.array([[0.7, 0.0, 0.0, -20.0], [0.0, 0.7, 0.0, 4.0], [0.0, 0.0, 3.0, 50.0], [0.0, 0.0, 0.0, 1.0]])
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def images(n, size=32, start=100):
    return ct_phantoms(range(start, start + n), size)[:, 0].numpy()


def npy_inputs(folder, n):
    """n small clean images im0.npy ... in ``folder``; returns (folder, names)."""
    names = [f"im{i}.npy" for i in range(n)]
    for name, im in zip(names, images(n)):
        write_array(folder / name, im)
    return folder, names


def run_cli(args, capsys):
    rc = main(["reconstruct", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_help_lists_reconstruct_and_bench(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "reconstruct" in out and "bench" in out
    with pytest.raises(SystemExit) as e:
        main(["reconstruct", "--help"])
    assert e.value.code == 0 and "resumable" in capsys.readouterr().out.lower()


@pytest.fixture
def one_image(tmp_path):
    p = tmp_path / "img.npy"
    np.save(p, images(1)[0])
    return p


@pytest.mark.parametrize("args,words", [
    (["--solver", "nope"], "argument '--solver'"),
    (["--solver", "dds"], "argument '--prior'"),
    (["--solver", "dds", "--prior", "no-such-prior"], "argument '--prior'"),
    (["--solver", "tv", "--task", "bogus"], "argument '--task'"),
    (["--solver", "tv", "--set", "bogus=1"], "argument '--set'"),
    (["--solver", "tv", "--set", "solver.bogus=1"], "argument 'tv.<option>'"),
    (["--solver", "dds", "--prior", "ct-phantom-64", "--set", "dds.n_samples=2"], "argument 'dds.<option>'"),  # use n_samples
    (["--solver", "tv", "--set", "seed=abc"], "argument '--seed'"),
])
def test_bad_arguments_one_clear_message(tmp_path, one_image, capsys, args, words):
    rc, out, err = run_cli([one_image, "--out", tmp_path / "out", *args], capsys)
    assert rc == 2
    assert words in err and err.count("error:") == 1 and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "img.npy").exists()


def test_bad_inputs_and_outputs(tmp_path, one_image, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = run_cli([one_image, "--solver", "tv", "--out", blocker / "sub"], capsys)
    assert rc == 2 and "argument '--out'" in err
    rc, _, err = run_cli([tmp_path / "missing.nii.gz", "--solver", "tv", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "argument 'INPUT'" in err and "missing.nii.gz" in err
    (tmp_path / "notes.txt").write_text("hi")
    rc, _, err = run_cli([tmp_path / "notes.txt", "--solver", "tv", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "notes.txt" in err
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    np.save(tmp_path / "a" / "x.npy", images(1)[0]), np.save(tmp_path / "b" / "x.npy", images(1)[0])
    rc, _, err = run_cli([tmp_path / "a", tmp_path / "b", "--solver", "tv", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "distinct output names" in err


@pytest.mark.skipif("mri-brainphantom-64" not in priors_available(), reason="shipped prior not installed")
def test_prior_channels_must_fit_the_task(tmp_path, one_image, capsys):
    rc, _, err = run_cli([one_image, "--task", "ct", "--solver", "dds", "--prior", "mri-brainphantom-64",
                          "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "argument '--prior'" in err and "1 channel" in err


def test_nifti_volume_sparse_view_ct(tmp_path, capsys):
    hu = images(3) * 2000 - 1000                                            # Hounsfield-like units
    src = write_nifti(tmp_path / "in" / "ct.nii.gz", hu, AFFINE)
    out = tmp_path / "out"
    rc, _, err = run_cli([src, "--solver", "tv", "--views", "16", "--out", out, "--no-progress", "--set",
                          "solver.lam=0.002", "--set", "solver.n_iter=100", "--set", "write_dicom=true"], capsys)
    assert rc == 0, err
    v = read_nifti(out / "ct.nii.gz")
    assert v.data.shape == (3, 32, 32) and np.allclose(v.affine, AFFINE, atol=1e-5)
    assert -1100 < v.data.min() and v.data.max() < 1100                      # written back in the input's units
    d = read_dicom_series(out / "ct_dicom")
    assert np.allclose(d.affine, AFFINE, atol=1e-4) and np.abs(d.data - v.data).max() < 0.1
    rec = json.loads((out / "records" / "ct.nii.gz.json").read_text())
    assert rec["task"] == "ct" and rec["metrics"]["PSNR"] > 20 and rec["nfe"] == 0 and rec["peak_mb"] is not None
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["views"] == 16 and cfg["solver_options"] == {"lam": 0.002, "n_iter": 100} and cfg["write_dicom"] is True
    # adjoint on the same data is worse: the metrics mean something
    rc, _, _ = run_cli([src, "--solver", "adjoint", "--views", "16", "--out", tmp_path / "adj", "--no-progress"], capsys)
    adj = json.loads((tmp_path / "adj" / "records" / "ct.nii.gz.json").read_text())
    assert rc == 0 and adj["metrics"]["PSNR"] < rec["metrics"]["PSNR"] - 3


@pytest.mark.skipif("ct-phantom-64" not in priors_available(), reason="shipped prior not installed")
def test_volume_solver_reconstructs_whole_volumes(tmp_path, capsys):
    """A volume solver gets the slice stack as one volume and the 2D prior lifted slice by slice."""
    from invdiff.solvers import available

    if "dds3d" not in available():
        pytest.skip("no volume solver registered")
    src = write_nifti(tmp_path / "in" / "vol.nii.gz", images(3), AFFINE)
    out = tmp_path / "out"
    rc, _, err = run_cli([src, "--solver", "dds3d", "--prior", "ct-phantom-64", "--views", "16", "--out", out,
                          "--no-progress", "--set", "solver.num_steps=3"], capsys)
    assert rc == 0, err
    rec = json.loads((out / "records" / "vol.nii.gz.json").read_text())
    assert rec["nfe"] == 3 and rec["metrics"]["PSNR"] > 12                  # one solve for the whole volume
    assert read_nifti(out / "vol.nii.gz").data.shape == (3, 32, 32)


def test_native_3d_prior_makes_a_2d_solver_solve_the_whole_volume(tmp_path, capsys):
    """A native 3D prior (``spatial_dims == 3``) with a 2D solver: the input is solved as one volume (the solver's
    volume path), not in batches of 2D slices the 3D network could not take."""
    from invdiff.priors.networks import CompactUNet
    from invdiff.priors.neural import NeuralPrior

    torch.manual_seed(0)
    p = NeuralPrior(CompactUNet(base_channels=8, channel_mult=(1, 2), emb_dim=16, dims=3), sigma_data=0.2, channels=1)
    ckpt = p.save(tmp_path / "p3d.safetensors")
    src = write_nifti(tmp_path / "in" / "vol.nii.gz", images(4), AFFINE)
    out = tmp_path / "out"
    rc, _, err = run_cli([src, "--solver", "dds", "--prior", ckpt, "--views", "16", "--out", out, "--no-progress",
                          "--set", "solver.num_steps=2", "--set", "batch_slices=2"], capsys)
    assert rc == 0, err
    rec = json.loads((out / "records" / "vol.nii.gz.json").read_text())
    assert rec["nfe"] == 2                                                  # one solve, not one per batch of 2
    assert read_nifti(out / "vol.nii.gz").data.shape == (4, 32, 32)


def test_images_and_sinogram_inputs(tmp_path, capsys):
    x = images(2)
    write_png(tmp_path / "in" / "a.png", x[0], 0.0, 1.0)
    write_array(tmp_path / "in" / "b.npy", x[1])
    sino = simulate_sinogram(Volume(x, AFFINE), n_views=24)
    write_sinogram(tmp_path / "in" / "c.h5", sino)
    out = tmp_path / "out"
    rc, _, err = run_cli([tmp_path / "in", "--solver", "cg", "--out", out, "--no-progress", "--noise", "0.001"], capsys)
    assert rc == 0, err
    index = json.loads((out / "index.json").read_text())
    recs = {r["output"]: r for r in index["records"]}
    assert set(recs) == {"a.npy", "b.npy", "c.nii.gz"} and index["counts"]["done"] == 3
    assert recs["a.npy"]["task"] == "inpainting" and recs["c.nii.gz"]["task"] == "ct"
    assert np.load(out / "b.npy").shape == (32, 32) and (out / "a.png").is_file()   # preview for a .png input
    v = read_nifti(out / "c.nii.gz")
    assert v.data.shape == (2, 32, 32) and np.allclose(v.affine, AFFINE, atol=1e-5)
    err_rms = np.sqrt(np.mean((v.data - x) ** 2))
    assert err_rms < 0.1, err_rms                                           # the sinogram's own units come back
    assert recs["c.nii.gz"]["metrics"] is None and recs["b.npy"]["metrics"]["PSNR"] > 10
    md = (out / "metrics.md").read_text()
    assert "| a.npy | inpainting | cg | done |" in md and "2 std" in md


def test_failures_reported_others_kept_and_resume(tmp_path, capsys):
    d = tmp_path / "in"
    for i, im in enumerate(images(2)):
        write_array(d / f"good{i}.npy", im)
    (d / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    out = tmp_path / "out"
    args = [d, "--solver", "tv", "--set", "solver.n_iter=20", "--out", out, "--no-progress"]
    rc, stdout, err = run_cli(args, capsys)
    assert rc == 1 and "broken.npy" in err and "1 input(s) failed" in err
    assert (out / "good0.npy").is_file() and (out / "good1.npy").is_file() and not (out / "broken.npy").exists()
    index = json.loads((out / "index.json").read_text())
    assert index["counts"] == {"done": 2, "failed": 1, "missing": 0}
    failed = [r for r in index["records"] if r["status"] == "failed"]
    assert "broken.npy" in failed[0]["error"]
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("good*.npy")}
    rc, stdout, _ = run_cli(args, capsys)                                  # re-run: finished outputs are skipped
    assert rc == 1 and "2 already done" in stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("good*.npy")} == stamp
    (d / "broken.npy").unlink()
    rc, stdout, _ = run_cli(args + ["--overwrite"], capsys)
    assert rc == 0 and {p.name: p.stat().st_mtime_ns for p in out.glob("good*.npy")} != stamp
    assert json.loads((out / "index.json").read_text())["counts"]["done"] == 2


def _outputs_ok(out, names):
    """Every expected output present exactly once, readable, no temporary leftovers, nothing extra."""
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    assert [f for f in files if f.endswith(".npy")] == sorted(names)
    assert not [f for f in files if f.startswith(".")], files
    assert not [p for p in (out / "records").iterdir() if p.name.startswith(".")]
    for n in names:
        a = np.load(out / n, allow_pickle=False)
        assert a.shape == (32, 32) and np.isfinite(a).all()
    recs = [json.loads((out / "records" / f"{n}.json").read_text()) for n in names]
    assert all(r["status"] == "done" for r in recs)
    return recs


def test_kill_minus_9_then_resume(tmp_path, capsys):
    d, names = npy_inputs(tmp_path / "in", 6)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "invdiff.cli", "reconstruct", str(d), "--solver", "tv", "--out", str(out),
           "--set", "solver.n_iter=600", "--no-progress"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < 120:
        done = [p for p in out.glob("im*.npy")] if out.exists() else []
        if done or proc.poll() is not None:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(list(out.glob("im*.npy")))
    assert 1 <= n_before < 6, "the run must be killed in the middle"
    for p in out.glob("im*.npy"):                                          # whatever exists is complete
        assert np.load(p).shape == (32, 32)
    rc, stdout, err = run_cli(cmd[4:], capsys)                             # the same command again (in-process)
    assert rc == 0, err
    assert f"({n_before} already done" in stdout
    _outputs_ok(out, names)
    index = json.loads((out / "index.json").read_text())
    assert index["counts"] == {"done": 6, "failed": 0, "missing": 0}


def test_sharding_two_ranks_in_process(tmp_path, capsys, monkeypatch):
    """The scale-out logic without processes: rank 1 then rank 0 of a world of 2 (rank 0 merges)."""
    import invdiff.reconstruct as R

    d, names = npy_inputs(tmp_path / "in", 5)
    out = tmp_path / "out"
    monkeypatch.setattr(R, "barrier", lambda world: None)
    for rank in (1, 0):
        monkeypatch.setattr(R, "dist_context", lambda rank=rank: (rank, 2, False))
        rc, _, err = run_cli([d, "--solver", "adjoint", "--out", out, "--no-progress"], capsys)
        assert rc == 0, err
        if rank == 1:
            assert sorted(p.name for p in out.glob("*.npy")) == ["im1.npy", "im3.npy"]
            assert not (out / "index.json").exists()
    recs = _outputs_ok(out, names)
    assert [r["rank"] for r in recs] == [0, 1, 0, 1, 0]
    assert json.loads((out / "index.json").read_text())["counts"]["done"] == 5


@pytest.mark.slow
def test_torchrun_two_ranks_cover_all_inputs_once(tmp_path):
    d, names = npy_inputs(tmp_path / "in", 5)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "invdiff.cli",
           "reconstruct", str(d), "--solver", "adjoint", "--out", str(out), "--no-progress"]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    recs = _outputs_ok(out, names)
    ranks = {r["output"]: r["rank"] for r in recs}
    assert [ranks[n] for n in names] == [0, 1, 0, 1, 0]                      # disjoint shards [rank::2], both ranks
    index = json.loads((out / "index.json").read_text())                   # rank 0 merged everything after the barrier
    assert index["counts"] == {"done": 5, "failed": 0, "missing": 0}
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)   # resumable under torchrun too
    assert r.returncode == 0 and "(3 already done on this rank)" in r.stdout, r.stdout + r.stderr
