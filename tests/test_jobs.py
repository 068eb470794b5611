"""The batch-job engine (invdiff.jobs): volume-solver metadata, discovery, shards, seeds, the loop's bookkeeping."""
import json

import numpy as np
import pytest

from invdiff import jobs
from invdiff.datasets.inputs import classify_file
from invdiff.solvers import base


def test_volume_solvers_come_from_register_metadata(monkeypatch):
    assert jobs.is_volume_solver("dds3d") and jobs.is_volume_solver("diffusion-mbir")
    assert not jobs.is_volume_solver("dds") and not jobs.is_volume_solver("no-such-solver")
    base.available()
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))   # a new 3D solver, found without editing a list

    @base.register("test-volume-solver", needs_prior=False, sampler=False, volume=True)
    def _solver(y, physics, prior, *, generator, n_samples, progress):
        raise NotImplementedError

    assert jobs.is_volume_solver("test-volume-solver")
    from invdiff.bench.tasks import TASKS, applicable

    two_d = next(t for t in TASKS.values() if t.dims == 2)
    assert "3D tasks only" in applicable(two_d, "test-volume-solver")


def test_discover_shard_and_seeds(tmp_path):
    (tmp_path / "b").mkdir()
    for p in ("a.npy", "b/c.npy", "b/.hidden.npy", "notes.txt"):
        np.save(tmp_path / p, np.zeros(2)) if p.endswith(".npy") else (tmp_path / p).write_text("x")
    items = jobs.discover([tmp_path, tmp_path / "a.npy"], lambda p, explicit: classify_file(p, explicit=explicit))
    assert [it.path.relative_to(tmp_path).as_posix() for it in items] == ["a.npy", "b/c.npy"]  # once each, sorted
    with pytest.raises(ValueError, match="INPUT"):
        jobs.discover([tmp_path / "notes.txt"], lambda p, explicit: classify_file(p, explicit=explicit))
    work = list(range(7))
    shards = [jobs.shard(work, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == work and shards[1] == [1, 4]
    assert jobs.item_seed(0, "a.npy") == jobs.item_seed(0, "a.npy") != jobs.item_seed(1, "a.npy")


def test_run_items_skips_done_records_failures_and_goes_on(tmp_path, capsys):
    items = [jobs.Item(tmp_path / f"in{i}", "image", out_name=f"out{i}.txt") for i in range(4)]
    (tmp_path / "out0.txt").write_text("done before")          # done: skipped
    (tmp_path / ".out1.txt.part").write_text("stale")            # left by a killed run: cleaned
    items[3].error = "in3: unreadable"                            # known bad input: reported

    def work(it):
        if it.out_name == "out2.txt":
            raise RuntimeError("solver diverged")
        (tmp_path / it.out_name).write_text("ok")
        return {"status": "done"}

    tally = jobs.run_items(items, work, ctx=jobs.DistContext(), name="t", out=tmp_path, progress=False)
    assert (tally.done, tally.skipped, tally.failed) == (1, 1, 2)
    assert not (tmp_path / ".out1.txt.part").exists()
    assert json.loads(jobs.record_path(tmp_path, "out2.txt").read_text())["status"] == "failed"
    statuses = [r["status"] for r in jobs.merge_records(tmp_path, items)]
    assert statuses == ["done", "done", "failed", "failed"]
    assert "[t] FAILED" in capsys.readouterr().err
