"""`invdiff bench`: task registry, tiny runs, result files, resumability, sweeps, clear errors, torchrun."""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from invdiff.bench.tasks import TASKS, applicable, get_task
from invdiff.cli import main
from invdiff.priors import available as priors_available

TINY = ["--size", "32", "--n-images", "2", "--no-progress", "--set", "dds.num_steps=3", "--set", "tv.n_iter=60",
        "--set", "cg.max_iter=10"]
HAVE_CT_PRIOR = "ct-phantom-64" in priors_available()


def bench(args, capsys):
    rc = main(["bench", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_builds_consistent_data_and_operator(name):
    t = get_task(name)
    size, depth = 32, 8
    x = t.images([0, 1], size, depth)
    assert x.shape[:2] == (2, t.channels) and x.shape[-2:] == (size, size)
    assert x.dim() == (5 if t.dims == 3 else 4) and torch.isfinite(x).all()
    assert torch.equal(x, t.images([0, 1], size, depth))                  # deterministic held-out images
    assert not torch.equal(x[0], x[1])
    mag = x.pow(2).sum(1).sqrt() if t.channels == 2 else x[:, 0]
    assert 0.3 < float(mag.max()) <= 1.0 + 1e-5 and float(x.min()) >= (-1.0 if t.channels == 2 else 0.0)
    op = t.physics(size, depth, 0.0, torch.Generator().manual_seed(0))
    y = op(x)
    # adjointness <A x, y> = <x, A^T y> on this task's operator
    lhs, rhs = (op.A(x) * y).sum(), (x * op.A_adjoint(y)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-3), (float(lhs), float(rhs))
    assert t.baseline in ("tv", "l1-wavelet") and applicable(t, t.baseline) is None


def test_tiny_bench_writes_every_output(tmp_path, capsys):
    solvers = "adjoint,cg,tv" + (",dds" if HAVE_CT_PRIOR else "")
    rc, out, err = bench(["--tasks", "inpainting-random,ct-8view", "--solvers", solvers, "--out", tmp_path, *TINY],
                         capsys)
    assert rc == 0, err
    res = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["task"], r["solver"]): r for r in res["rows"]}
    n_solvers = len(solvers.split(","))
    assert len(rows) == 2 * n_solvers
    for r in rows.values():
        assert r["n"] == 2 and r["errors"] == 0
        for k in ("PSNR", "SSIM", "NMSE", "NFE", "seconds", "peak_mb"):
            assert r[k] is not None, k
    assert rows[("ct-8view", "tv")]["PSNR"] > rows[("ct-8view", "adjoint")]["PSNR"] + 5
    assert rows[("ct-8view", "tv")]["NFE"] == 0
    if HAVE_CT_PRIOR:
        assert rows[("ct-8view", "dds")]["NFE"] == 3 and rows[("ct-8view", "dds")]["prior"] == "ct-phantom-64"
    per_image = res["meta"]["per_image"]
    assert len(per_image) == 4 * n_solvers and {r["image"] for r in per_image} == {0, 1}
    with open(tmp_path / "results_per_image.csv") as f:
        assert len(list(csv.DictReader(f))) == 4 * n_solvers
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 2 * n_solvers
    md = (tmp_path / "results.md").read_text()
    assert "## PSNR / SSIM" in md and "| ct-8view |" in md
    assert (tmp_path / "psnr_vs_nfe.png").stat().st_size > 10_000
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["n_images"] == 2 and cfg["solver_options"]["tv"] == {"n_iter": 60}
    assert "| task |" in out                                              # the grid is printed


def test_rerun_computes_only_missing_rows(tmp_path, capsys):
    args = ["--tasks", "inpainting-box", "--solvers", "adjoint,baseline", "--out", tmp_path, *TINY]
    rc, out, _ = bench(args, capsys)
    assert rc == 0 and "4 rows planned, 0 already done; this rank computes 4" in out
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "rows").rglob("*.json")}
    assert len(stamps) == 4
    rc, out, _ = bench(args, capsys)
    assert rc == 0 and "this rank computes 0" in out
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "rows").rglob("*.json")} == stamps
    rc, out, _ = bench(args[:-len(TINY)] + [a if a != "2" else "3" for a in TINY], capsys)   # one more image
    assert rc == 0 and "6 rows planned, 4 already done; this rank computes 2" in out
    res = json.loads((tmp_path / "results.json").read_text())
    assert {r["solver"]: r["n"] for r in res["rows"]} == {"adjoint": 3, "tv": 3}   # 'baseline' = tv here
    rc, out, _ = bench(args + ["--overwrite"], capsys)
    assert rc == 0 and "this rank computes 4" in out


def test_sweep_draws_psnr_vs_nfe(tmp_path, capsys):
    if not HAVE_CT_PRIOR:
        pytest.skip("shipped prior not installed")
    rc, _, err = bench(["--tasks", "inpainting-random", "--solvers", "dds,tv", "--sweep", "dds.num_steps=2,4",
                        "--out", tmp_path, *TINY, "--n-images", "1"], capsys)
    assert rc == 0, err
    rows = {r["solver"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert rows["dds (num_steps=2)"]["NFE"] == 2 and rows["dds (num_steps=4)"]["NFE"] == 4 and "tv" in rows


def test_skips_are_explained_and_3d_tasks_run(tmp_path, capsys):
    from invdiff.solvers import available

    volume_solver = HAVE_CT_PRIOR and "dds3d" in available()
    solvers = "adjoint,tv,l1-wavelet" + (",dds3d" if volume_solver else "")
    rc, out, err = bench(["--tasks", "ct3d-8view,inpainting-box", "--solvers", solvers, "--out", tmp_path,
                          "--size", "16", "--set", "depth=3", "--n-images", "1", "--no-progress",
                          "--set", "tv.n_iter=40", "--set", "dds3d.num_steps=2"], capsys)
    assert rc == 0, err
    assert "ct3d-8view / l1-wavelet: skipped, l1-wavelet is a 2D Cartesian MRI solver" in out
    res = json.loads((tmp_path / "results.json").read_text())
    by = {(r["task"], r["solver"]): r for r in res["rows"]}
    assert by[("ct3d-8view", "tv")]["PSNR"] > by[("ct3d-8view", "adjoint")]["PSNR"]
    assert not any(s == "l1-wavelet" for _, s in by)
    if volume_solver:                      # a 2D prior is lifted slice by slice for the volume task
        assert "inpainting-box / dds3d: skipped, dds3d reconstructs volumes" in out
        assert by[("ct3d-8view", "dds3d")]["NFE"] == 2 and ("inpainting-box", "dds3d") not in by
    assert any("l1-wavelet" in n for n in res["meta"]["notes"])


@pytest.mark.parametrize("args,words", [
    (["--tasks", "nope", "--solvers", "tv"], "argument '--tasks'"),
    (["--tasks", "ct-8view", "--solvers", "nope"], "argument '--solvers'"),
    (["--tasks", "ct-8view", "--solvers", "tv", "--set", "tv.bogus=1"], "argument 'tv.<option>'"),
    (["--tasks", "ct-8view", "--solvers", "tv", "--set", "solver.lam=1"], "argument '--set'"),
    (["--tasks", "ct-8view", "--solvers", "tv", "--sweep", "tv=1,2"], "argument '--sweep'"),
    (["--tasks", "ct-8view", "--solvers", "tv", "--prior", "no-such-prior"], "argument '--prior'"),
    (["--tasks", "ct-8view", "--solvers", "tv", "--set", "nope=1"], "argument '--set'"),
])
def test_bad_arguments_one_clear_message(tmp_path, capsys, args, words):
    rc, _, err = bench([*args, "--out", tmp_path / "o"], capsys)
    assert rc == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "results.json").exists()


def test_list_tasks(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in TASKS)


@pytest.mark.slow
def test_torchrun_two_ranks(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "invdiff.cli",
           "bench", "--tasks", "inpainting-box,ct-8view", "--solvers", "adjoint,tv", "--out", str(tmp_path), *TINY]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "results.json").read_text())
    per_image = res["meta"]["per_image"]
    assert len(per_image) == 8 and all(r["status"] == "ok" for r in per_image)
    assert len({r["key"] for r in per_image}) == 8                           # every row exactly once
    assert len(list((tmp_path / "rows").rglob("*.json"))) == 8


def test_task_tuned_options_apply_unless_overridden_and_n_samples_averages_chains(tmp_path, capsys):
    from invdiff.bench.runner import plan

    cfg = {"tasks": ["ct-8view"], "solvers": ["dps", "diffpir"], "prior": None, "sweep": {"dps.n_samples": [1, 2]},
           "n_images": 1, "first_image": 0, "size": 32, "depth": 8, "noise": 0.01}
    if not HAVE_CT_PRIOR:
        pytest.skip("shipped prior not installed")
    rows, _ = plan(cfg, {"diffpir": {"zeta": 0.3}})
    opts = {r.label: r.options for r in rows}
    assert opts["dps (n_samples=1)"] == {"n_samples": 1}   # tuned values: the solver's measured defaults (below)
    assert opts["dps (n_samples=2)"]["n_samples"] == 2
    assert opts["diffpir"] == {"zeta": 0.3}
    from invdiff.priors import load
    from invdiff.solvers.base import resolve_options

    op, prior = get_task("ct-8view").physics(32), load("ct-phantom-64")
    assert resolve_options("dps", {}, op, prior)[0]["weight"] == 1000.0                 # the measured CT weight
    resolved = resolve_options("diffpir", opts["diffpir"], op, prior)[0]
    assert resolved["lambda_"] == 1.0 and resolved["zeta"] == 0.3                      # a run's own value wins
    rc, _, err = bench(["--tasks", "ct-8view", "--solvers", "dds", "--sweep", "dds.n_samples=1,3", "--out", tmp_path,
                        *TINY, "--n-images", "1"], capsys)
    assert rc == 0, err
    rows = {r["solver"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert rows["dds (n_samples=3)"]["NFE"] == rows["dds (n_samples=1)"]["NFE"] == 3   # one batched call per step
    assert rows["dds (n_samples=3)"]["NFE_images"] == 3 * rows["dds (n_samples=1)"]["NFE_images"] == 9
    rc, _, err = bench(["--tasks", "ct-8view", "--solvers", "tv", "--set", "tv.n_samples=2", "--out", tmp_path / "b",
                        *TINY], capsys)
    assert rc != 0 and "n_samples" in err                                     # deterministic solvers: refused


def test_row_key_follows_the_measured_defaults(monkeypatch):
    """A row's key holds the measured defaults it resolves to: after a change of the table, a resumed benchmark
    re-measures the rows the change affects (and only those), instead of taking stale rows for current ones."""
    from invdiff.bench.runner import plan
    from invdiff.solvers import defaults

    if not HAVE_CT_PRIOR:
        pytest.skip("shipped prior not installed")
    cfg = {"tasks": ["ct-8view"], "solvers": ["dds", "tv"], "prior": None, "sweep": {}, "n_images": 1,
           "first_image": 0, "size": 32, "depth": 8, "noise": 0.01}
    before = {r.solver: r.key for r in plan(cfg, {})[0]}
    moved = [defaults.Measured("dds", ("ct",), {"gamma": 123.0}, "test")]
    monkeypatch.setattr(defaults, "TABLE", moved + [r for r in defaults.TABLE if r.solver != "dds"])
    after = {r.solver: r.key for r in plan(cfg, {})[0]}
    assert after["dds"] != before["dds"] and after["tv"] == before["tv"]
    explicit = {r.solver: r.key for r in plan(cfg, {"dds": {"gamma": 5.0}})[0]}
    monkeypatch.setattr(defaults, "TABLE", [r for r in defaults.TABLE if r.solver != "dds"])
    assert {r.solver: r.key for r in plan(cfg, {"dds": {"gamma": 5.0}})[0]}["dds"] == explicit["dds"]
