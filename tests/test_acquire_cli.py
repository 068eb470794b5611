"""`invdiff acquire`: ADS per slice on images, volumes and fastMRI files; outputs consistent with the budget, resumable,
bad configuration or input -> exit 2 with nothing written. Tiny images and few steps (the shipped 64x64 priors)."""
import json
import os
import subprocess
import sys
import warnings

import h5py
import numpy as np
import pytest

from invdiff.cli import main
from invdiff.datasets import ct_phantoms
from invdiff.datasets.synthetic_fastmri import write_synthetic_fastmri
from invdiff.datasets.volumes import read_nifti, write_nifti
from invdiff.priors import available as priors_available

pytestmark = [pytest.mark.skipif(not {"ct-phantom-64", "mri-brainphantom-64"} <= set(priors_available()),
                                 reason="shipped priors not installed"),
              pytest.mark.filterwarnings("ignore::UserWarning")]   # the priors' size warning on 16x16 / 32x32 inputs
TINY = ["--set", "ads.num_steps=6", "--set", "ads.particles=4", "--no-progress"]


def run(args, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["acquire", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def image(path, size=16, seed=100):
    np.save(path, ct_phantoms([seed], size)[0, 0].numpy())
    return path


def check_slice_outputs(out, name, n_slices, n, budget, mask_shape):
    """Masks have the budget, the order lists every acquired candidate once, json == npy; returns the json."""
    doc = json.loads((out / f"{name}_acquisition.json").read_text())
    masks, order, scores = (np.load(out / f"{name}_{k}.npy") for k in ("masks", "order", "scores"))
    assert masks.shape == (n_slices, *mask_shape) and order.shape == (n_slices, budget, 2)
    assert doc["budget"] == budget and doc["n_candidates"] == n and len(doc["slices"]) == n_slices
    assert scores.shape[0] == n_slices and scores.shape[2] == n
    for s, sl in enumerate(doc["slices"]):
        cands = [c for c, _ in sl["order"]]
        assert len(set(cands)) == budget == len(cands) and sorted(cands) == sl["chosen"]
        assert order[s].tolist() == sl["order"]
        steps = [k for _, k in sl["order"]]
        assert steps == sorted(steps) and set(steps) - {-1} <= set(sl["event_steps"])
        for e, k in enumerate(sl["event_steps"]):            # acquired before event e: -inf; chosen at e: finite
            before = [c for c, kk in sl["order"] if kk < k]
            now = [c for c, kk in sl["order"] if kk == k]
            assert np.isneginf(scores[s, e, before]).all() and np.isfinite(scores[s, e, now]).all()
            rest = np.isfinite(scores[s, e])
            rest[now] = False
            if rest.any():        # the event's first pick has the highest score (later ones: conditioned re-scores)
                assert scores[s, e, now].max() >= scores[s, e, rest].max()
    assert (out / f"{name}_acquisition.png").stat().st_size > 1000
    return doc, masks


def test_help_states_presets_and_cost(capsys):
    with pytest.raises(SystemExit) as e:
        main(["acquire", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    from invdiff.solvers.ads import PRESETS

    for name, (n, steps, _) in PRESETS.items():
        assert name in out and str(n * steps) in out
    assert "50 + 15 x E" in out                        # preset restart: a new pass of 15 steps per event
    assert "examples:" in out and "NFE" in out and "resumable" in out.lower()
    assert main(["--help"]) == 0 and "acquire" in capsys.readouterr().out


def test_inpainting_patches_and_resume(tmp_path, capsys):
    src = image(tmp_path / "im.npy")
    out = tmp_path / "out"
    args = [src, "--out", out, "--budget", 4, "--set", "ads.unit=patch", "--set", "ads.patch=4", *TINY]
    rc, _, err = run(args, capsys)
    assert rc == 0, err
    doc, masks = check_slice_outputs(out, "im", 1, 16, 4, (16, 16))
    assert masks.sum() == 4 * 16 and doc["unit"] == "patch" and doc["task"] == "inpainting"
    assert np.load(out / "im.npy").shape == (16, 16)
    rec = json.loads((out / "records" / "im.npy.json").read_text())
    assert rec["status"] == "done" and rec["nfe"] == 6 and rec["images_denoised"] == 24 and rec["metrics"]["PSNR"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["budget"] == 4 and config["solver_options"] == {"num_steps": 6, "particles": 4, "unit": "patch",
                                                                   "patch": 4}
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("im*")}
    rc, out_text, err = run(args, capsys)                       # resume: done inputs are skipped
    assert rc == 0 and "1 already done" in out_text
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("im*")} == stamp


def test_mri_columns_and_ct_views(tmp_path, capsys):
    src = image(tmp_path / "im.npy")
    rc, _, err = run([src, "--task", "mri", "--acceleration", 4, "--out", tmp_path / "mri", *TINY], capsys)
    assert rc == 0, err
    doc, masks = check_slice_outputs(tmp_path / "mri", "im", 1, 16, 4, (16, 16))
    assert (masks[0] == masks[0][:1]).all() and masks[0, 0].sum() == 4       # whole columns
    assert [k for _, k in doc["slices"][0]["order"]][0] == -1                # the centre block first
    rc, _, err = run([src, "--task", "mri", "--acceleration", 4, "--out", tmp_path / "again", "--set", "figure=false",
                      *TINY], capsys)                                       # same seed: same acquisition
    assert rc == 0 and np.array_equal(np.load(tmp_path / "again" / "im_order.npy"),
                                      np.load(tmp_path / "mri" / "im_order.npy"))
    assert not (tmp_path / "again" / "im_acquisition.png").exists()
    vol = ct_phantoms([1, 2], 16)[:, 0].numpy()
    write_nifti(tmp_path / "vol.nii.gz", vol, np.diag([0.5, 0.5, 2.0, 1.0]))
    out = tmp_path / "ct"
    rc, _, err = run([tmp_path / "vol.nii.gz", "--budget", 3, "--set", "views=12", "--out", out, *TINY], capsys)
    assert rc == 0, err
    doc, masks = check_slice_outputs(out, "vol", 2, 12, 3, (12,))
    angles = np.load(out / "vol_angles.npy")
    assert angles.shape == (2, 3) and masks.sum(1).tolist() == [3, 3]
    for s in range(2):                                            # angles in acquisition order, on the 15-degree grid
        assert np.allclose(angles[s], [15.0 * c for c, _ in doc["slices"][s]["order"]])
    assert read_nifti(out / "vol.nii.gz").data.shape == (2, 16, 16)


def test_synthetic_fastmri_end_to_end(tmp_path):
    src = write_synthetic_fastmri(tmp_path / "file_brain_1.h5", n_slices=2, coils=4, shape=(32, 32))
    out = tmp_path / "out"
    # in a subprocess: ESPIRiT (sigpy) in this process changes how later tests' peak-memory readings behave
    # (tests/test_errors_and_guards.py::test_peak_mb_is_the_process_peak_not_the_growth)
    r = subprocess.run([sys.executable, "-W", "ignore", "-m", "invdiff.cli", "acquire", str(src), "--out", str(out),
                        "--budget", "12", "--set", "center_fraction=0.25", "--set", "espirit_kernel=4", "--set",
                        "slices=1", *TINY], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    doc, masks = check_slice_outputs(out, "file_brain_1", 1, 32, 12, (32, 32))
    assert doc["slices"][0]["slice"] == 1 and doc["slices"][0]["fixed"] == list(range(12, 20))
    with h5py.File(out / "file_brain_1.h5", "r") as f:
        assert f["reconstruction"].shape == (1, 32, 32) and f.attrs["mask"] == "ads"
    assert doc["metrics"]["SSIM"] > 0


@pytest.mark.parametrize("args,words", [
    (["--budget", 300], "argument '--budget'"),                   # 256 pixels
    (["--acceleration", 0.5], "argument '--acceleration'"),
    (["--task", "bogus"], "argument '--task'"),
    (["--budget", 4, "--acceleration", 4], "argument '--budget'"),
    (["--set", "ads.budget=3"], "argument 'ads.<option>'"),
    (["--set", "ads.bogus=3"], "argument 'ads.<option>'"),
    (["--preset", "huge"], "argument '--preset'"),
    (["--task", "mri", "--set", "center_fraction=0.9", "--budget", 4], "argument 'center_fraction'"),
    (["--prior", "no-such-prior"], "argument '--prior'"),
    (["--task", "mri", "--prior", "ct-phantom-64"], "argument '--prior'"),     # 1 channel, MRI needs 2
    (["--set", "slices=3"], "argument 'slices (of im.npy)'"),
    (["--set", "ads.particles=1"], "argument 'particles'"),                 # checked by ads' option spec
    (["--set", "ads.unit=line"], "argument 'unit'"),
    (["--set", "views=abc", "--task", "ct"], "argument 'views'"),
    (["--set", "figure=maybe"], "argument 'figure'"),
])
def test_bad_configuration_exit_2_nothing_written(tmp_path, capsys, args, words):
    src = image(tmp_path / "im.npy")
    rc, _, err = run([src, "--out", tmp_path / "out", *TINY, *args], capsys)       # args win over TINY
    assert rc == 2 and words in err and err.count("error:") == 1 and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_bad_inputs_exit_2_nothing_written(tmp_path, capsys):
    test_file = write_synthetic_fastmri(tmp_path / "file_test.h5", n_slices=1, coils=4, shape=(32, 32), kind="test")
    rc, _, err = run([test_file, "--out", tmp_path / "out", *TINY], capsys)
    assert rc == 2 and "undersampled" in err and not (tmp_path / "out").exists()
    multi = write_synthetic_fastmri(tmp_path / "multi.h5", n_slices=1, coils=4, shape=(32, 32))
    rc, _, err = run([multi, "--out", tmp_path / "out", *TINY], capsys)      # ACS of 2 columns: no ESPIRiT maps
    assert rc == 2 and "espirit_kernel" in err and not (tmp_path / "out").exists()
    (tmp_path / "notes.txt").write_text("x")
    rc, _, err = run([tmp_path / "notes.txt", "--out", tmp_path / "out", *TINY], capsys)
    assert rc == 2 and "argument 'INPUT'" in err and not (tmp_path / "out").exists()


def test_sharding_two_ranks_in_process(tmp_path, capsys, monkeypatch):
    """Scale-out without processes: rank 1 then rank 0 of a world of 2 (inputs r::2; rank 0 writes the index)."""
    import invdiff.jobs as jobs

    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        image(d / f"im{i}.npy", seed=100 + i)
    out = tmp_path / "out"
    monkeypatch.setattr(jobs, "barrier", lambda world: None)
    for rank in (1, 0):
        monkeypatch.setattr(jobs, "join", lambda rank=rank: jobs.DistContext(rank, 2, False))
        rc, _, err = run([d, "--out", out, "--budget", 8, *TINY], capsys)
        assert rc == 0, err
        if rank == 1:
            assert sorted(p.name for p in out.glob("im?.npy")) == ["im1.npy"] and not (out / "index.json").exists()
    index = json.loads((out / "index.json").read_text())
    assert index["counts"] == {"done": 3, "failed": 0, "missing": 0}
    assert [r["rank"] for r in index["records"]] == [0, 1, 0]
    for i in range(3):
        check_slice_outputs(out, f"im{i}", 1, 256, 8, (16, 16))
