"""EmpiricalPrior wraps deepinv's MMSE oracle around its device and contiguity bugs."""
import pytest
import torch
import deepinv as dinv

import invdiff
from invdiff.operators import MRI, make_mask
from invdiff.priors.empirical import EmpiricalPrior


def test_upstream_mmse_string_device_bug_still_exists_and_is_avoided():
    atoms = torch.rand(3, 1, 4, 4)
    with pytest.raises(AttributeError):  # canary: remove the workaround when deepinv fixes it
        dinv.models.MMSE(dataloader=atoms, device="cpu")(atoms, 0.1)
    assert EmpiricalPrior(atoms).denoise(atoms, 0.1).shape == atoms.shape


def test_non_contiguous_input_works():
    atoms = torch.rand(3, 2, 4, 4)
    x = torch.rand(4, 4, 2, 3).permute(3, 2, 0, 1)[:3]  # non-contiguous (3, 2, 4, 4)
    assert not x.is_contiguous()
    out = EmpiricalPrior(atoms, value_range=None).denoise(x, 0.5)
    assert out.shape == x.shape


def test_limits_of_the_exact_denoiser():
    atoms = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    prior = EmpiricalPrior(atoms)
    assert torch.allclose(prior.denoise(atoms[2:3], 1e-3), atoms[2:3], atol=1e-5)
    assert torch.allclose(prior.denoise(torch.zeros(1, 1, 4, 4), 1e3), atoms.mean(0, keepdim=True), atol=1e-4)


def test_ddrm_with_exact_prior_recovers_the_atom_on_mri():
    n = 8
    gen = torch.Generator().manual_seed(1)
    atoms = torch.rand(20, 2, n, n, generator=gen)
    prior = EmpiricalPrior(atoms)
    op = MRI(make_mask("random", (n, n), 2, center_fraction=0.25, seed=0), img_size=(n, n), sigma=0.01)
    y = op(atoms[7:8])
    rec = invdiff.solve(y, op, prior, solver="ddrm", num_steps=50)
    assert torch.allclose(rec.mean, atoms[7:8], atol=0.02)
