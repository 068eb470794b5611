"""Solver options declared once (Option specs): registry validation, typing, listing; measured defaults."""
import re
from pathlib import Path

import pytest
import torch

import invdiff
from invdiff.cli import main
from invdiff.operators import MatrixOperator
from invdiff.priors.base import Prior
from invdiff.solvers import available, get
from invdiff.solvers.base import Option, resolve_options
from invdiff.solvers.defaults import TABLE, measured, operator_kind

ROOT = Path(__file__).resolve().parents[1]


class Iso(Prior):
    """x0 ~ N(0.5, 0.04 I), exact denoiser; optional declared value range (as the shipped image priors)."""

    def __init__(self, value_range=None):
        super().__init__()
        self.value_range = value_range

    def denoise(self, x, sigma):
        s = sigma.reshape(-1, *([1] * (x.dim() - 1))) if torch.is_tensor(sigma) and sigma.dim() > 0 else sigma
        return 0.5 + 0.04 / (0.04 + s ** 2) * (x - 0.5)


def _problem():
    op = MatrixOperator(torch.eye(4)[:2], sigma=0.1)
    return op.A(torch.ones(1, 4)), op


def _bad_value(o: Option):
    """A value outside what ``o`` accepts (None when it accepts every value of its type)."""
    if o.choices is not None:
        return "no-such-choice"
    if o.type in (int, float) and o.lo is not None:
        return o.type(o.lo - 1) if not o.lo_open else o.type(o.lo)
    if o.type in (int, float) and o.hi is not None:
        return o.type(o.hi + 1)
    return None


@pytest.mark.parametrize("name", available())
def test_every_solver_declares_its_options(name):
    spec = get(name)
    assert isinstance(spec.options, tuple) and all(isinstance(o, Option) for o in spec.options)
    for o in spec.options:
        assert o.help and o.type in (int, float, str, bool, object)
        if o.default is not None:
            o.validate(o.default, "")                   # the declared default is accepted
    numeric_or_choice = [o for o in spec.options if _bad_value(o) is not None]
    assert not spec.options or numeric_or_choice, f"{name}: no option with a range or choices"


@pytest.mark.parametrize("name", available())
def test_unknown_and_out_of_range_options_are_refused_with_the_accepted_list(name):
    y, op = _problem()
    prior = Iso()
    accepted = [o.name for o in get(name).options]
    with pytest.raises(ValueError) as e:
        invdiff.solve(y, op, prior, solver=name, no_such_option=1)
    msg = str(e.value)
    assert "argument 'no_such_option'" in msg and repr(name) in msg
    assert all(a in msg for a in accepted) and ("none" in msg if not accepted else True)
    for o in get(name).options:
        bad = _bad_value(o)
        if bad is None:
            continue
        with pytest.raises(ValueError) as e:
            invdiff.solve(y, op, prior, solver=name, **{o.name: bad})
        msg = str(e.value)
        assert f"argument '{o.name}'" in msg and repr(name) in msg and all(a in msg for a in accepted), msg


def test_strings_are_coerced_by_the_declared_type():
    y, op = _problem()
    typed = invdiff.solve(y, op, solver="cg", lam=0.01, max_iter=5)
    text = invdiff.solve(y, op, solver="cg", lam="0.01", max_iter="5")
    assert torch.equal(typed.mean, text.mean) and text.info["options"] == {"lam": 0.01, "max_iter": 5}
    assert invdiff.solve(y, op, solver="cg", lam=1).info["options"]["lam"] == 1.0       # int for a float option
    assert isinstance(invdiff.solve(y, op, solver="cg", lam=1).info["options"]["lam"], float)
    assert resolve_options("tv", {"nonneg": "false"})[0]["nonneg"] is False
    assert resolve_options("red-diff", {"chunk": "none", "num_steps": "20"})[0]["chunk"] is None
    with pytest.raises(TypeError, match="argument 'max_iter'.*integer.*'cg'"):
        invdiff.solve(y, op, solver="cg", max_iter="five")
    with pytest.raises(TypeError, match="argument 'max_iter'"):
        invdiff.solve(y, op, solver="cg", max_iter=2.5)
    with pytest.raises(TypeError, match="argument 'nonneg'"):
        resolve_options("tv", {"nonneg": "maybe"})


def test_register_refuses_a_function_that_disagrees_with_its_spec():
    from invdiff.solvers.base import register

    with pytest.raises(RuntimeError, match="option spec"):
        @register("test-mismatch", options=(Option("a", int, 1, "a"),))
        def f(y, physics, prior, *, generator, n_samples, progress, b):
            pass
    with pytest.raises(ValueError, match="argument 'k'"):
        Option("k", int, 0, "refused default", lo=1)


def test_cli_lists_solvers_and_options(capsys):
    assert main(["solvers"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in available())
    assert main(["solvers", "red-diff"]) == 0
    out = capsys.readouterr().out
    for o in get("red-diff").options:
        assert re.search(rf"^\s+{o.name}\s", out, re.M)
    assert "measured defaults" in out and "red_diff_tuning.md" in out
    assert main(["solvers", "nope"]) == 2


# ------------------------------------------------------------------------------------------------
# measured defaults
# ------------------------------------------------------------------------------------------------
def test_table_rows_name_real_solvers_options_and_result_files():
    for r in TABLE:
        spec = get(r.solver)
        for k, v in r.options.items():
            o = spec.option(k)
            if not callable(v):
                o.validate(v, "")
        path = r.source.split(" ")[0].rstrip(":")
        assert (ROOT / path).is_file(), path


def test_operator_kinds_of_the_bench_tasks():
    from invdiff.bench.tasks import TASKS

    want = {"inpainting-box": "inpainting-holes", "inpainting-random": "inpainting-sparse",
            "deblur-gaussian": "blur", "deblur-motion": "blur", "mri-4x-singlecoil": "mri-singlecoil",
            "ct-16view": "ct", "ct-limited90": "ct-limited",
            "ct3d-8view": "ct3d"}
    for t, kind in want.items():
        assert operator_kind(TASKS[t].physics(32, 4)) == kind, t
    assert operator_kind(MatrixOperator(torch.eye(3), sigma=0.1)) is None
    from invdiff.solvers.defaults import wide_band       # camera shake keeps most frequencies, a Gaussian few

    assert wide_band(TASKS["deblur-motion"].physics(32, 4)) and not wide_band(TASKS["deblur-gaussian"].physics(32, 4))
    from invdiff.solvers.defaults import sparse_kspace   # 8x: 1/8 of k-space (+ centre), 4x: about 1/4

    assert sparse_kspace(TASKS["mri-8x-singlecoil"].physics(32, 4))
    assert not sparse_kspace(TASKS["mri-4x-singlecoil"].physics(32, 4))
    from invdiff.operators import MRI

    mask3d = (torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    assert operator_kind(MRI(mask3d, img_size=(2, 4, 16, 16), three_d=True, sigma=0.01)) == "mri3d"  # as mri3d-4x
    # multi-coil: checked in test_measured_defaults_apply_only_where_measured_and_explicit_options_win


def test_measured_defaults_apply_only_where_measured_and_explicit_options_win():
    from invdiff.operators import MultiCoilMRI, birdcage_maps, make_mask

    mri = MultiCoilMRI(make_mask("equispaced", (16, 16), 4, seed=0), birdcage_maps(4, (16, 16)),
                       img_size=(2, 16, 16), sigma=0.01)
    mri_prior = Iso(value_range=(-1.0, 1.0))
    got = measured("red-diff", mri, mri_prior, {})
    assert got["options"] == {"lr": 0.1, "lam": 0.01} and "red_diff_tuning" in got["source"]
    assert measured("red-diff", mri, mri_prior, {"lam": 0.5})["options"] == {"lr": 0.1}   # explicit wins
    assert measured("red-diff", mri, mri_prior, {"preset": "mri"}) == {}                  # a preset: its values
    assert measured("red-diff", mri, Iso(value_range=(0.0, 1.0)), {}) == {}               # other units: none
    assert measured("red-diff", mri, Iso(), {}) == {}                                     # no value range: none
    noisy = MultiCoilMRI(mri.mask, birdcage_maps(4, (16, 16)), img_size=(2, 16, 16), sigma=0.1)
    assert measured("red-diff", noisy, mri_prior, {}) == {}                               # outside the sigma range
    assert measured("dds", mri, mri_prior, {})["options"]["gamma"] == pytest.approx(10.0)      # 4x: 1/4 sampled
    from invdiff.operators import CT

    ct_prior = Iso(value_range=(0.0, 1.0))
    few, many = CT(16, n_views=8, sigma=0.01), CT(16, n_views=16, sigma=0.01)
    assert measured("red-diff", few, ct_prior, {})["options"]["lam"] == 0.25             # rows may depend on views
    assert measured("red-diff", many, ct_prior, {})["options"]["lam"] == pytest.approx(0.25 / 3)
    assert measured("dds", few, ct_prior, {}) == {}                                      # v = 0.005 rule stays
    assert measured("dds", many, ct_prior, {})["options"]["gamma"] == pytest.approx(50 / 3)
    x = torch.rand(1, 2, 16, 16) * 0.5
    y = mri(x)
    rec = invdiff.solve(y, mri, mri_prior, solver="red-diff", num_steps=3)
    assert rec.info["lr"] == 0.1 and rec.info["lam"] == 0.01 and rec.info["measured_defaults"]["kind"] == \
        "mri-multicoil"
    rec = invdiff.solve(y, mri, mri_prior, solver="red-diff", num_steps=3, preset="mri")
    assert rec.info["lr"] == pytest.approx(0.1) and rec.info["lam"] == pytest.approx(0.25)   # preset x c = 1
    assert "measured_defaults" not in rec.info


def test_rules_that_follow_the_acceleration_and_the_number_of_views():
    from invdiff.operators import CT, MRI, Blur, MultiCoilMRI, birdcage_maps, gaussian_kernel, make_mask

    mri_prior, ct_prior = Iso(value_range=(-1.0, 1.0)), Iso(value_range=(0.0, 1.0))
    coils = birdcage_maps(4, (32, 32))
    m4, m8 = (make_mask("equispaced", (32, 32), acc, seed=0) for acc in (4, 8))
    mc4, mc8 = (MultiCoilMRI(m, coils, img_size=(2, 32, 32), sigma=0.01) for m in (m4, m8))
    # DDS on multi-coil MRI: gamma 10 at 4x, 17.3 at 8x (v / sigma^2 with v = 0.001 and 0.001 sqrt 3)
    assert measured("dds", mc4, mri_prior, {})["options"]["gamma"] == pytest.approx(10.0)
    assert measured("dds", mc8, mri_prior, {})["options"]["gamma"] == pytest.approx(10.0 * 3 ** 0.5)
    sc4 = MRI(m4, img_size=(2, 32, 32), sigma=0.01)                                 # single-coil 4x keeps 17.3
    assert measured("dds", sc4, mri_prior, {})["options"]["gamma"] == pytest.approx(10.0 * 3 ** 0.5)
    noisier = MultiCoilMRI(m4, coils, img_size=(2, 32, 32), sigma=0.02)            # scales with 1 / sigma^2
    assert measured("dds", noisier, mri_prior, {})["options"]["gamma"] == pytest.approx(2.5)
    assert measured("dds", mc4, mri_prior, {"gamma": 3.0}) == {}                    # explicit wins
    resolved, _ = resolve_options("dds", {}, mc4, mri_prior)
    assert resolved["gamma"] == pytest.approx(10.0)
    # DiffPIR's prior weight on CT: 3 above 24 views over 180 degrees, 1 at 8-16 views and on limited angle
    lam = {n: measured("diffpir", CT(32, n_views=n, sigma=0.01), ct_prior, {})["options"]["lambda_"]
           for n in (8, 16, 32)}
    assert lam == {8: 1.0, 16: 1.0, 32: 3.0}
    limited = CT(32, n_views=32, angle_range=90.0, sigma=0.01)
    assert measured("diffpir", limited, ct_prior, {})["options"] == {"lambda_": 1.0, "zeta": 0.5}
    # DPS's weight on CT at 1000 steps: 3000 above 12 views over 180 degrees, 1000 at 8 views and on limited angle
    w = {n: measured("dps", CT(32, n_views=n, sigma=0.01), ct_prior, {})["options"]["weight"] for n in (8, 16, 32)}
    assert w == {8: 1000.0, 16: 3000.0, 32: 3000.0}
    assert measured("dps", limited, ct_prior, {})["options"]["weight"] == 1000.0
    assert measured("dps", CT(32, n_views=16, sigma=0.01), ct_prior, {"num_steps": 200})["options"]["weight"] == 1000.0
    # ... and on blur: 7 / 3
    blur = Blur(gaussian_kernel(9, 2.0), img_size=(1, 16, 16), sigma=0.01)
    assert measured("diffpir", blur, ct_prior, {})["options"] == {"lambda_": pytest.approx(7 / 3), "zeta": 0.6}
    # DPS on blur: 900 at 1000 steps, capped at 3 / step (300 at 100 steps, the weight measured best there)
    assert measured("dps", blur, ct_prior, {})["options"]["weight"] == 900.0
    assert measured("dps", blur, ct_prior, {"num_steps": 100})["options"]["weight"] == 300.0
    from invdiff.bench.tasks import TASKS

    shake = TASKS["deblur-motion"].physics(32, 4)                                  # wide band: 2700 at 1000 steps
    assert measured("dps", shake, ct_prior, {})["options"]["weight"] == 2700.0
    assert measured("dps", shake, ct_prior, {"num_steps": 100})["options"]["weight"] == 300.0
    # SMC: independent chains (islands of one particle) with linear tempering on CT and multi-coil MRI; one weighted
    # run elsewhere (limited-angle CT, single-coil MRI, blur: no island measurement)
    assert measured("smc", CT(32, n_views=8, sigma=0.01), ct_prior, {})["options"] == {"tempering": "linear",
                                                                                      "island_size": 1}
    assert measured("smc", mc4, mri_prior, {})["options"] == {"tempering": "linear", "island_size": 1}
    assert measured("smc", mc4, mri_prior, {"island_size": 8})["options"] == {"tempering": "linear"}
    for op, prior in ((limited, ct_prior), (sc4, mri_prior), (blur, ct_prior)):
        assert "island_size" not in measured("smc", op, prior, {}).get("options", {})
    # ... measured with the shipped neural priors: a prior without their value range (an exact Gaussian mixture)
    # keeps the solver's own defaults (noise tempering, one run)
    for op in (CT(32, n_views=8, sigma=0.01), mc4, blur):
        assert measured("smc", op, Iso(), {}) == {}


def test_without_a_measured_row_the_solver_defaults_and_output_are_unchanged():
    from invdiff.operators import Inpainting, random_mask

    op = Inpainting((1, 8, 8), random_mask((1, 8, 8), keep=0.5, generator=torch.Generator().manual_seed(0)),
                    sigma=0.01)
    y = op.A(torch.rand(1, 1, 8, 8))
    a = invdiff.solve(y, op, Iso(), solver="red-diff", num_steps=5, seed=3)
    b = invdiff.solve(y, op, Iso(), solver="red-diff", num_steps=5, seed=3, preset="default", weighting="linear")
    assert torch.equal(a.mean, b.mean) and "measured_defaults" not in a.info


def test_dps_weight_follows_the_number_of_steps_the_caller_asks_for():
    from invdiff.operators import CT
    from invdiff.solvers.base import resolve_options

    ct, ct_prior = CT(16, n_views=8, sigma=0.01), Iso(value_range=(0.0, 1.0))
    assert measured("dps", ct, ct_prior, {})["options"]["weight"] == 1000.0            # spec default: 1000 steps
    assert measured("dps", ct, ct_prior, {"num_steps": 200})["options"]["weight"] == 1000.0
    assert measured("dps", ct, ct_prior, {"num_steps": 100})["options"]["weight"] == 500.0   # capped at 5 / step
    assert measured("dps", ct, ct_prior, {"num_steps": 20, "weight": 7.0}) == {}          # explicit wins
    resolved, _ = resolve_options("dps", {"num_steps": "50"}, ct, ct_prior)               # CLI strings too
    assert resolved["num_steps"] == 50 and resolved["weight"] == 250.0
