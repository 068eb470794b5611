"""invdiff.bench.harness: the shared part of the benchmark scripts (arguments, held-out data, measured solves,
quality, prior versions, result files)."""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from invdiff.bench.harness import (PinnedPriors, RowCache, experiment_args, heldout, installed_versions, mean_rows,
                                   measured, prior_versions, quality, start, write_experiment)
from invdiff.bench.tasks import get_task
from invdiff.datasets import ct_phantoms, mri_phantoms, split_seeds


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_args_smoke_goes_to_a_fresh_folder_and_fixes_threads(keep_threads):
    ap = experiment_args("doc", images=3)
    ap.add_argument("--particles", type=int, default=16)
    a = start(ap.parse_args(["--smoke", "--images", "2"]), argv=["benchmarks/x.py", "--smoke", "--images", "2"])
    assert a.images == 2 and a.particles == 16 and a.threads == 1
    assert torch.get_num_threads() == 1
    assert Path(a.out).is_dir() and not any(Path(a.out).iterdir()) and "benchmarks" not in Path(a.out).parts
    assert a.command == "python benchmarks/x.py --smoke --images 2"
    Path(a.out).rmdir()
    b = start(experiment_args("doc").parse_args([]), argv=["benchmarks/x.py"])
    assert b.out == "benchmarks/results" and not hasattr(b, "images")
    with pytest.raises(ValueError, match="threads"):
        start(experiment_args("doc").parse_args(["--threads", "0"]), argv=["x.py"])


def test_heldout_matches_the_split_and_the_task_registry():
    assert torch.equal(heldout("ct", 2, size=32), ct_phantoms(split_seeds("heldout", 2), 32))
    assert torch.equal(heldout("mri", 1, first=1, size=32), mri_phantoms(split_seeds("heldout", 2), 32)[1:])
    task = get_task("mri-4x-multicoil")
    assert torch.equal(heldout("mri-4x-multicoil", 2, size=32), task.images([0, 1], size=32))
    assert torch.equal(heldout(task, 1, first=1, size=32), task.images([1], size=32))


def test_quality_is_psnr_ssim_with_peak_one_on_magnitudes():
    x = ct_phantoms(split_seeds("heldout", 2), 32)
    q = quality(x + 0.1, x)                        # MSE 0.01 at peak 1: 20 dB
    assert q["PSNR"] == pytest.approx(20.0, abs=1e-3) and 0 < q["SSIM"] < 1
    z = mri_phantoms(split_seeds("heldout", 1), 32)
    c, s = math.cos(0.7), math.sin(0.7)            # a global phase leaves the magnitude image unchanged
    rotated = torch.stack([c * z[:, 0] - s * z[:, 1], s * z[:, 0] + c * z[:, 1]], 1)
    q = quality(rotated, z)
    assert q["PSNR"] > 60 and q["SSIM"] == pytest.approx(1.0, abs=1e-4)
    assert quality(z, z)["PSNR"] == math.inf


def test_measured_returns_value_and_cost():
    value, cost = measured(lambda n: SimpleNamespace(nfe=n, mean=torch.zeros(3)), 7)
    assert value.nfe == 7 and cost["nfe"] == 7
    assert set(cost) == {"nfe", "seconds", "cpu_s", "peak_mb"}
    assert isinstance(cost["seconds"], float) and isinstance(cost["cpu_s"], float)   # reported, not judged
    _, cost = measured(torch.ones, 4)
    assert cost["nfe"] is None


def test_mean_rows_groups_and_labels():
    rows = [{"task": "a", "image": 0, "solver": "s", "PSNR": 10.0, "peak_mb": None},
            {"task": "a", "image": 1, "solver": "s", "PSNR": 20.0, "peak_mb": 4.0},
            {"task": "b", "image": 0, "solver": "s", "PSNR": 30.0, "peak_mb": 2.0, "note": "x"}]
    out = mean_rows(rows, ["task", "solver"], label={"image": "mean"})
    assert out == [{"task": "a", "solver": "s", "image": "mean", "PSNR": 15.0, "peak_mb": 4.0},
                   {"task": "b", "solver": "s", "image": "mean", "PSNR": 30.0, "peak_mb": 2.0}]


def test_write_experiment_header_names_command_and_priors(tmp_path, keep_threads):
    a = start(experiment_args("doc").parse_args(["--out", str(tmp_path)]), argv=["benchmarks/x.py", "--out", "o"])
    rows = [{"solver": "tv", "PSNR": 25.0, "seconds": 1.5, "extra": 1}]
    priors = {"ct-phantom-64": {"step": 100, "sha256_12": "abc"}}
    md = write_experiment(a, "x", rows, ["solver", "PSNR", "seconds"], title="T",
                          notes="What it measures.\n\nUsage: python x.py", meta={"k": 1}, priors=priors)
    text = md.read_text()
    assert text.startswith("# T\n\nWhat it measures.") and "Usage:" not in text
    assert "Command: `python benchmarks/x.py --out o`" in text and "'sha256_12': 'abc'" in text
    assert "| tv | 25 | 1.5 |" in text
    data = json.loads((tmp_path / "x.json").read_text())
    assert data["rows"] == rows and data["meta"]["k"] == 1 and data["meta"]["priors"] == priors
    assert data["meta"]["command"] == "python benchmarks/x.py --out o" and data["meta"]["threads"] == 1
    assert (tmp_path / "x.csv").read_text().splitlines() == ["solver,PSNR,seconds", "tv,25.0,1.5"]


def test_prior_versions_of_an_unshipped_prior():
    from invdiff.priors import GaussianMixture

    gm = GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 2), torch.eye(2)[None])
    assert prior_versions({"gm": gm}) == {"gm": {"step": None}}
    assert installed_versions(["no-such-prior"]) == {}


def test_pinned_priors_load_once_and_record_the_version():
    from invdiff.priors import available

    if "ct-phantom-64" not in available():
        pytest.skip("shipped prior ct-phantom-64 not installed")
    pinned = PinnedPriors()
    p = pinned("ct-phantom-64")
    assert pinned("ct-phantom-64") is p
    v = pinned.versions()["ct-phantom-64"]
    assert v["sha256_12"] == installed_versions(["ct-phantom-64"])["ct-phantom-64"]["sha256_12"]


def test_row_cache_skips_rows_already_measured(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"PSNR": 25.5, "solver": "tv"}

    cache = RowCache(tmp_path / "rows")
    key = 'ct-8view__tv__{"lam": 0.001}__0'
    assert cache.get(key, compute) == {"PSNR": 25.5, "solver": "tv"} and len(calls) == 1
    assert cache.get(key, compute) == {"PSNR": 25.5, "solver": "tv"} and len(calls) == 1   # read back, not rerun
    assert RowCache(tmp_path / "rows").get(key, compute)["PSNR"] == 25.5 and len(calls) == 1
    assert [p.name for p in (tmp_path / "rows").iterdir()] == ["ct-8view__tv___lam_0.001___0.json"]
    assert RowCache(None).get(key, compute) and len(calls) == 2                              # no folder: no cache
    assert RowCache(None).path(key) is None


def test_weights_sha_follows_the_tensors_not_the_file_and_option_default_reads_the_measured_table(tmp_path):
    """Cached benchmark rows are keyed by the prior's weights: a copy with other metadata has the same tag; the
    tuning grids of the real-size benchmarks centre on what the solver uses by default on that operator."""
    import torch

    from invdiff.bench.harness import option_default, weights_sha
    from invdiff.operators import CT, MultiCoilMRI
    from invdiff.priors import load
    from invdiff.priors.registry import WEIGHTS_DIR

    p = load("ct-phantom-64")
    tag = weights_sha("ct-phantom-64")
    assert len(tag) == 12 and tag == weights_sha(str(WEIGHTS_DIR / "ct-phantom-64.safetensors"))
    p.info = {"note": "other metadata"}
    p.save(tmp_path / "copy.safetensors", dtype=torch.float16)
    assert weights_sha(str(tmp_path / "copy.safetensors")) == tag
    assert option_default("diffpir", "lambda_", CT(64, n_views=32, sigma=0.01), p) == 3.0       # > 24 views
    assert option_default("diffpir", "num_steps", CT(64, n_views=8, sigma=0.01), p) == 100.0   # solver default
    maps = torch.ones(4, 64, 64, dtype=torch.complex64) / 2
    mask = torch.zeros(64, 64)
    mask[:, ::8] = 1
    op = MultiCoilMRI(mask, maps, (2, 64, 64), sigma=0.01)
    assert option_default("dds", "gamma", op, load("mri-brainphantom-64")) == pytest.approx(17.3, rel=0.01)
