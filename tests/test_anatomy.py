"""Anatomy-like real-size generators (issue 11 item 3): deterministic, in range, several families and contrasts."""
import numpy as np
import pytest
import torch

from invdiff.datasets import PhantomStream
from invdiff.datasets.anatomy import CT_FAMILIES, HU_WINDOW, MRI_FAMILIES, ct_anatomy, ct_anatomy_np, mri_anatomy, mri_anatomy_np


def test_deterministic_per_seed_and_in_range():
    a, b = ct_anatomy([3, 4], 96), ct_anatomy([4, 3], 96)
    assert torch.equal(a, b.flip(0)) and not torch.equal(a[0], a[1])
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    z = mri_anatomy([5, 6], 96)
    assert z.shape == (2, 2, 96, 96)
    assert torch.allclose(z.norm(dim=1).flatten(1).max(1).values, torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("family", CT_FAMILIES)
def test_ct_families_have_air_water_and_bone_on_the_hu_scale(family):
    img = ct_anatomy_np(11, 128, family)
    lo, hi = HU_WINDOW
    hu = img * (hi - lo) + lo
    assert (hu < -900).mean() > 0.1                  # air around the body
    assert ((hu > -150) & (hu < 100)).mean() > 0.1   # fat / water / soft tissue
    assert (hu > 300).mean() > 0.001                 # bone (vertebra / ribs / skull)
    assert len(np.unique(np.round(img * 4000))) > 200  # textured, not piecewise constant


@pytest.mark.parametrize("family", MRI_FAMILIES)
def test_mri_families_complex_with_phase(family):
    z = mri_anatomy_np(2, 128, family)
    mag = np.abs(z)
    assert mag.max() == pytest.approx(1.0, abs=1e-5)
    assert np.angle(z)[mag > 0.3].std() > 0.1
    assert (mag < 0.05).mean() > 0.05                # background


def test_stream_kinds_and_channels():
    s = PhantomStream("ct-anatomy", 64)
    assert s.channels == 1 and torch.equal(s(1, 2), ct_anatomy([2, 3], 64))
    assert PhantomStream("mri-anatomy", 64).channels == 2
