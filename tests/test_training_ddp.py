"""Data-parallel training (torch.distributed, gloo, CPU): W processes follow the single-process trajectory.

Rank r trains on rows [r B/W, (r+1) B/W) of the global batch and DDP averages the gradients, so W processes
and one process with the same global batch B differ only by floating-point summation order. Adam divides by
sqrt(v): for parameters whose gradient is zero in exact arithmetic (a per-channel bias right before a
GroupNorm with one channel per group) rounding noise becomes an update of up to ~lr, so parameters are
compared at lr = 1e-4 to 3e-5, and the Adam first moments (linear in the averaged gradients) to 1e-5 of
their scale. A negative control (one rank's shard alone) shows the comparison can fail.

The fast test forks 2 worker processes from pytest (gloo over a FileStore, 1 thread each) and calls
:func:`invdiff.training.train` in each; the CLI test goes through torchrun (``--nproc 2``).
"""
import json
import multiprocessing
import os
import subprocess
import sys

import pytest
import torch

from invdiff.datasets import PhantomStream, ct_phantoms
from invdiff.datasets.phantoms3d import VolumeStream
from invdiff.training import (TensorSource, batch_part, make_config, read_train_checkpoint, train,
                             train_prior_main)

LR = 1e-4
TINY = dict(name="d", data="ct", size=16, base_channels=8, channel_mult=(1, 2), emb_dim=16, batch_size=4, warmup=2,
            lr=LR, log_every=1, ckpt_every=3, keep_every=3, progress=False, sigma_data=0.2, data_shift=0.1)


def _ckpt(run, name="latest"):
    return read_train_checkpoint(run / "d" / "ckpt" / f"{name}.safetensors")


def _compare(a: dict, b: dict) -> dict:
    """Max |a - b| over model/EMA weights; Adam first moments relative to their largest entry."""
    def maxdiff(prefix, suffix=""):
        ks = [k for k in a if k.startswith(prefix) and k.endswith(suffix)]
        assert ks and set(ks) <= set(b)
        return max(float((a[k].float() - b[k].float()).abs().max()) for k in ks), ks

    model, _ = maxdiff("model.")
    ema, _ = maxdiff("ema.")
    m, ks = maxdiff("optim.", ".exp_avg")
    scale = max(float(b[k].abs().max()) for k in ks)
    return {"model": model, "ema": ema, "exp_avg_rel": m / scale}


def _assert_equivalent(a, b):
    d = _compare(a, b)
    assert d["model"] < 3e-5 and d["ema"] < 3e-5 and d["exp_avg_rel"] < 1e-5, d
    return d


# ------------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("world", [2, 4])
def test_batch_parts_union_is_the_single_process_batch(world):
    data = ct_phantoms(range(6), 8)

    def pairs(step, b):  # a plain callable with conditioning: sliced
        x = TensorSource(data, seed=3)(step, b)
        return x, x.flip(-1)

    for source in (PhantomStream("mri", 8), VolumeStream("ct3d", 8), TensorSource(data, seed=1), pairs):
        for step in (0, 5):
            full = source(step, 8)
            parts = [batch_part(source, step, 8, r * 8 // world, (r + 1) * 8 // world) for r in range(world)]
            if isinstance(full, tuple):
                assert all(torch.equal(torch.cat([p[i] for p in parts]), full[i]) for i in range(2))
            else:
                assert torch.equal(torch.cat(parts), full)


# ------------------------------------------------------------------------------------- 2 forked processes
def _worker(rank, world, store, out, steps_list):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        for steps in steps_list:  # several segments: each later one resumes under DDP
            train(make_config({**TINY, "out": out, "steps": steps}))
    finally:
        dist.destroy_process_group()


def _run_forked(tmp_path, out, steps_list, world=2):
    ctx = multiprocessing.get_context("fork")  # children inherit the imported modules: no 2 s re-import
    store = tmp_path / "store"
    procs = [ctx.Process(target=_worker, args=(r, world, str(store), str(out), steps_list)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    return [p.exitcode for p in procs]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_processes_match_one_process_and_resume_under_ddp(tmp_path):
    single = train(make_config({**TINY, "out": str(tmp_path / "single"), "steps": 5}))  # (imports torch._dynamo
    assert single.step == 5                                                            # once, for the forks too)
    # DDP: 0 -> 3 (checkpoint), then a second train() call resumes under DDP: 3 -> 5
    assert _run_forked(tmp_path, tmp_path / "ddp", [3, 5]) == [0, 0]
    meta_d, ddp5 = _ckpt(tmp_path / "ddp")
    _, one5 = _ckpt(tmp_path / "single")
    _, ddp3 = _ckpt(tmp_path / "ddp", "step_0000003")
    _, one3 = _ckpt(tmp_path / "single", "step_0000003")
    _assert_equivalent(ddp3, one3)
    d = _assert_equivalent(ddp5, one5)  # measured: model 8.7e-6, EMA 6.9e-6, exp_avg 3.6e-6 relative
    assert meta_d["step"] == 5 and meta_d["config"]["nproc"] == 2
    # rank 0 wrote the logs: the loss of the global batch (mean over ranks) at every step
    rows = lambda run: [r.split(",")[:2] for r in (run / "d" / "loss.csv").read_text().splitlines()[1:]]  # noqa: E731
    ddp_rows, one_rows = rows(tmp_path / "ddp"), rows(tmp_path / "single")
    assert [r[0] for r in ddp_rows] == [str(i) for i in range(1, 6)] == [r[0] for r in one_rows]
    assert all(abs(float(a[1]) - float(b[1])) < 1e-4 * float(b[1]) for a, b in zip(ddp_rows, one_rows))
    assert json.loads((tmp_path / "ddp" / "d" / "config.json").read_text())["nproc"] == 2
    assert not list((tmp_path / "ddp").rglob("*.tmp"))
    # negative control: training on one rank's half of the batch is far from both
    half = train(make_config({**TINY, "out": str(tmp_path / "half"), "steps": 5, "batch_size": 2}))
    assert half.step == 5
    _, half5 = _ckpt(tmp_path / "half")
    assert _compare(half5, one5)["exp_avg_rel"] > 1e3 * d["exp_avg_rel"]
    # a checkpoint written under DDP resumes in one process (the global batch, not the world size, defines a run)
    (tmp_path / "cross" / "d" / "ckpt").mkdir(parents=True)
    (tmp_path / "cross" / "d" / "ckpt" / "latest.safetensors").write_bytes(
        (tmp_path / "ddp" / "d" / "ckpt" / "step_0000003.safetensors").read_bytes())
    resumed = train(make_config({**TINY, "out": str(tmp_path / "cross"), "steps": 5}))
    assert resumed.step == 5
    _assert_equivalent(_ckpt(tmp_path / "cross")[1], one5)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_world_size_must_divide_the_batch(tmp_path):
    # batch 4 over 3 ranks: every rank fails at once with a ValueError (exit code 1), before any collective: no hang
    assert _run_forked(tmp_path, tmp_path / "bad", [2], world=3) == [1, 1, 1]
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------- CLI through torchrun
def _cli_args(out, **kw):
    args = {**TINY, "out": out, **kw}
    argv = []
    for k, v in args.items():
        v = ",".join(map(str, v)) if isinstance(v, tuple) else str(v).lower() if isinstance(v, bool) else str(v)
        argv += [f"--{k.replace('_', '-')}", v]
    return argv


@pytest.mark.slow  # about 10 s on an idle 2-core machine (torchrun + 2 fresh interpreters), 25 s on a busy one
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_cli_nproc_launches_torchrun_and_resumes(tmp_path, capfd):
    # one process 0 -> 3, then `--nproc 2` (re-launched under torch.distributed.run) resumes it to 5 under DDP
    assert train_prior_main(_cli_args(str(tmp_path / "run"), steps=3) + ["--export", "never"]) == 0
    code = train_prior_main(_cli_args(str(tmp_path / "run"), steps=5, nproc=2) + ["--export", "never"])
    err = capfd.readouterr().err
    assert code == 0, err[-3000:]
    assert "torch.distributed.run" in err and "resumed d at step 3" in err
    assert err.count("trained to step 5") == 1  # rank 0 alone reports
    single = train(make_config({**TINY, "out": str(tmp_path / "single"), "steps": 5}))
    assert single.step == 5
    _assert_equivalent(_ckpt(tmp_path / "run")[1], _ckpt(tmp_path / "single")[1])


@pytest.mark.slow
def test_torchrun_directly_with_export(tmp_path):
    # the documented launch: python -m torch.distributed.run ... -m invdiff.training, export by rank 0
    wdir = tmp_path / "w"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "invdiff.training", *_cli_args(str(tmp_path / "run"), steps=4), "--weights-dir", str(wdir),
           "--set", "eval_images=2", "--set", "eval_sigmas=0.1", "--set", "sample_steps=2", "--set", "n_samples=2"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (wdir / "d.safetensors").is_file() and "2 data-parallel processes" in (wdir / "d.md").read_text()
    single = train(make_config({**TINY, "out": str(tmp_path / "single"), "steps": 4}))
    assert single.step == 4
    _assert_equivalent(_ckpt(tmp_path / "run")[1], _ckpt(tmp_path / "single")[1])


def test_cli_rejects_bad_distributed_settings(tmp_path, capsys):
    base = ["--out", str(tmp_path), "--steps", "2"]
    assert train_prior_main(base + ["--nproc", "2", "--dist-backend", "nccl"]) == 2
    err = capsys.readouterr().err
    assert "dist_backend" in err and "nccl" in err and err.count("error") == 1
    assert train_prior_main(base + ["--nproc", "3", "--batch-size", "16"]) == 2
    assert "multiple of nproc=3" in capsys.readouterr().err
    assert train_prior_main(base + ["--nproc", "0"]) == 2
    assert "nproc" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was launched or written
