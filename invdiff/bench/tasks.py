r"""The standard benchmark tasks: each is (operator factory, data source, default prior, natural classical baseline).

Data are held-out phantoms of :mod:`invdiff.datasets` (seeds >= ``HELDOUT_SEED_START``, never seen by the shipped
priors): image ``i`` of a task uses seed ``split_seeds("heldout", 1, start=first + i)``. Volumes (3D tasks) blend
two held-out phantoms smoothly along the slice axis (:func:`volume_phantoms`). Measurement noise is Gaussian with
standard deviation ``sigma`` on the [0, 1] image scale (k-space / normalised sinogram for MRI / CT), seeded per image.
Masks and kernels are fixed per task (seed 0), so every solver sees the same measurements.

=====================  =====================================================  ==================  ===========
task                   forward model                                          prior               baseline
=====================  =====================================================  ==================  ===========
inpainting-box         centred missing box, 40 % of each side                 ct-phantom-64       tv
inpainting-random      70 % of pixels missing (uniform)                       ct-phantom-64       tv
deblur-gaussian        Gaussian blur 9 x 9, std 2 px (circular)               ct-phantom-64       tv
deblur-motion          random camera-shake kernel 9 x 9 (circular)            ct-phantom-64       tv
mri-4x-singlecoil      Cartesian, equispaced columns 4x (8 % centre)          mri-brainphantom-64 l1-wavelet
mri-8x-singlecoil      8x (4 % centre)                                        mri-brainphantom-64 l1-wavelet
mri-4x-multicoil       8 birdcage coils, 4x equispaced                        mri-brainphantom-64 l1-wavelet
mri-8x-multicoil       8 birdcage coils, 8x equispaced                        mri-brainphantom-64 l1-wavelet
ct-8view / 16 / 32     parallel beam, 8 / 16 / 32 views over 180 degrees      ct-phantom-64       tv
ct-limited90           parallel beam, 32 views over 90 degrees                ct-phantom-64       tv
ct3d-8view             volume (D slices), 8 views per slice (CT3D)            ct-phantom-64 (2D)  tv (3D TV)
mri3d-4x               3D Cartesian, 2D Poisson-disc over (kz, ky) 4x         mri-brainphantom-64 tv (3D TV)
=====================  =====================================================  ==================  ===========

The MRI masks follow fastMRI's pairing (4x with 8 % centre, 8x with 4 %). On the 3D tasks a 2D prior is lifted
slice by slice (:mod:`invdiff.priors.lift`), so 2D diffusion solvers reconstruct the slices independently and the
volume solvers (``dds3d``, ``diffusion-mbir``) couple them with their z-regulariser.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .._validate import check_choice


@dataclass(frozen=True)
class BenchTask:
    """One benchmark task.

    name: registry key; kind: inpainting | deblur | mri | ct; data: "ct" (1 channel in [0, 1]) or "mri" (complex,
    2 channels, max magnitude 1); make_physics(size, depth, sigma, rng) -> operator; prior: default prior name;
    baseline / baseline_options: the natural classical solver and its tuned options; solver_options: options of
    other solvers on this task (``{solver: {option: value}}``, used unless the run sets them; empty for the
    standard tasks: diffusion solvers take their measured per-operator defaults, :mod:`invdiff.solvers.defaults`,
    which is where tuned settings live); dims: 2 or 3.
    """

    name: str
    kind: str
    description: str
    data: str
    make_physics: Callable
    prior: str
    baseline: str
    baseline_options: dict = field(default_factory=dict)
    dims: int = 2
    solver_options: dict = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return 2 if self.data == "mri" else 1

    def images(self, indices, size: int = 64, depth: int = 8, first: int = 0) -> torch.Tensor:
        """Held-out images ``(N, C, H, W)`` (or volumes ``(N, C, D, H, W)``) for image indices ``indices``."""
        from ..datasets import split_seeds

        seeds = [split_seeds("heldout", 1, start=first + int(i))[0] for i in indices]
        if self.dims == 3:
            return torch.stack([volume_phantoms(self.data, s, depth, size) for s in seeds])
        from ..datasets import ct_phantoms, mri_phantoms

        return (ct_phantoms if self.data == "ct" else mri_phantoms)(seeds, size)

    def physics(self, size: int = 64, depth: int = 8, sigma: float = 0.01, rng: torch.Generator | None = None):
        return self.make_physics(size, depth, sigma, rng)


def volume_phantoms(data: str, seed: int, depth: int, size: int) -> torch.Tensor:
    r"""A (C, D, size, size) volume: slice d is :math:`\cos^2(t_d) a + \sin^2(t_d) b`, :math:`t_d = \frac{\pi}{2}
    \frac{d}{D-1}`, of two held-out phantoms a, b (seeds ``seed`` and ``seed + 10**8``): smooth along the slice axis,
    each slice a plausible image of the 2D prior's kind."""
    from ..datasets import ct_phantoms, mri_phantoms

    gen = ct_phantoms if data == "ct" else mri_phantoms
    a, b = gen([seed, seed + 10 ** 8], size)
    t = torch.linspace(0, np.pi / 2, depth) if depth > 1 else torch.zeros(1)
    w = torch.cos(t) ** 2
    return (w[None, :, None, None] * a[:, None] + (1 - w)[None, :, None, None] * b[:, None])


# ------------------------------------------------------------------------------------------------
# operator factories
# ------------------------------------------------------------------------------------------------
def _inpainting(kind):
    def make(size, depth, sigma, rng):
        from ..operators import Inpainting, box_mask, random_mask

        m = box_mask((size, size), 0.4) if kind == "box" else \
            random_mask((size, size), keep=0.3, generator=torch.Generator().manual_seed(0))
        return Inpainting((1, size, size), m, sigma=sigma, rng=rng)

    return make


def _deblur(kind):
    def make(size, depth, sigma, rng):
        from ..operators import Blur, gaussian_kernel, motion_kernel

        k = gaussian_kernel(9, 2.0) if kind == "gaussian" else \
            motion_kernel(9, torch.Generator().manual_seed(0), intensity=0.5)
        return Blur(k, (1, size, size), padding="circular", sigma=sigma, rng=rng)

    return make


def _mri(acceleration, coils):
    def make(size, depth, sigma, rng):
        from ..operators import MRI, MultiCoilMRI, birdcage_maps, make_mask

        mask = make_mask("equispaced", (size, size), acceleration, seed=0)
        if coils:
            return MultiCoilMRI(mask, birdcage_maps(coils, (size, size)), img_size=(2, size, size), sigma=sigma,
                                rng=rng)
        return MRI(mask, img_size=(2, size, size), sigma=sigma, rng=rng)

    return make


def _ct(n_views, angle_range=180.0):
    def make(size, depth, sigma, rng):
        from ..operators import CT

        return CT(size, n_views=n_views, angle_range=angle_range, sigma=sigma, rng=rng)

    return make


def _ct3d(n_views):
    def make(size, depth, sigma, rng):
        from ..operators import CT3D

        return CT3D((1, depth, size, size), n_views=n_views, sigma=sigma, rng=rng)

    return make


def _mri3d(acceleration):
    def make(size, depth, sigma, rng):
        from ..operators import MRI, poisson_disc_mask

        # 3D Cartesian: phase encodes (kz, ky) = (D, W) under a Poisson-disc mask, readout (H) fully sampled.
        # On small grids sigpy's density search misses R within 0.1 for some seeds: take the first seed that hits.
        for seed in range(20):
            try:
                pe = poisson_disc_mask((depth, size), acceleration, center_fraction=0.25, seed=seed)  # (D, W)
                break
            except ValueError:
                if seed == 19:
                    raise
        mask = pe[:, None, :].expand(depth, size, size).contiguous()
        return MRI(mask, img_size=(2, depth, size, size), sigma=sigma, three_d=True, rng=rng)

    return make


_TV_IMG = {"lam": 0.01, "n_iter": 300}
_TV_CT = {"lam": 0.002, "n_iter": 300}
_TV_BLUR = {"lam": 0.002, "n_iter": 300}
_L1W = {"lam": 0.003}
TASKS: dict[str, BenchTask] = {t.name: t for t in [
    BenchTask("inpainting-box", "inpainting", "centred missing box (40 % of each side)", "ct", _inpainting("box"),
              "ct-phantom-64", "tv", _TV_IMG),
    BenchTask("inpainting-random", "inpainting", "70 % of pixels missing at random", "ct", _inpainting("random"),
              "ct-phantom-64", "tv", _TV_IMG),
    BenchTask("deblur-gaussian", "deblur", "Gaussian blur 9x9, std 2 px, circular", "ct", _deblur("gaussian"),
              "ct-phantom-64", "tv", _TV_BLUR),
    BenchTask("deblur-motion", "deblur", "camera-shake blur 9x9 (deepinv MotionBlurGenerator), circular", "ct",
              _deblur("motion"), "ct-phantom-64", "tv", _TV_BLUR),
    BenchTask("mri-4x-singlecoil", "mri", "single-coil Cartesian MRI, equispaced 4x, 8 % centre", "mri", _mri(4, 0),
              "mri-brainphantom-64", "l1-wavelet", _L1W),
    BenchTask("mri-8x-singlecoil", "mri", "single-coil Cartesian MRI, equispaced 8x, 4 % centre", "mri", _mri(8, 0),
              "mri-brainphantom-64", "l1-wavelet", _L1W),
    BenchTask("mri-4x-multicoil", "mri", "8-coil Cartesian MRI (birdcage maps), equispaced 4x", "mri", _mri(4, 8),
              "mri-brainphantom-64", "l1-wavelet", _L1W),
    BenchTask("mri-8x-multicoil", "mri", "8-coil Cartesian MRI (birdcage maps), equispaced 8x", "mri", _mri(8, 8),
              "mri-brainphantom-64", "l1-wavelet", _L1W),
    BenchTask("ct-8view", "ct", "sparse-view CT, 8 parallel-beam views over 180 degrees", "ct", _ct(8),
              "ct-phantom-64", "tv", _TV_CT),
    BenchTask("ct-16view", "ct", "sparse-view CT, 16 views over 180 degrees", "ct", _ct(16), "ct-phantom-64", "tv",
              _TV_CT),
    BenchTask("ct-32view", "ct", "sparse-view CT, 32 views over 180 degrees", "ct", _ct(32), "ct-phantom-64", "tv",
              _TV_CT),
    BenchTask("ct-limited90", "ct", "limited-angle CT, 32 views over 90 degrees", "ct", _ct(32, 90.0),
              "ct-phantom-64", "tv", _TV_CT),
    BenchTask("ct3d-8view", "ct", "volume CT, 8 views per slice (slice stack)", "ct", _ct3d(8), "ct-phantom-64",
              "tv", _TV_CT, dims=3),
    BenchTask("mri3d-4x", "mri", "3D Cartesian MRI, Poisson-disc (kz, ky) 4x, 25 % centre", "mri", _mri3d(4),
              "mri-brainphantom-64", "tv", {"lam": 0.003, "n_iter": 300}, dims=3),
]}


def get_task(name: str) -> BenchTask:
    check_choice("task", name, tuple(TASKS))
    return TASKS[name]


def applicable(task: BenchTask, solver: str, prior=None) -> str | None:
    """None if ``solver`` can run on ``task`` (with ``prior``, already lifted for 3D tasks), else the reason."""
    from ..jobs import is_volume_solver

    if is_volume_solver(solver) and task.dims != 3:
        return f"{solver} reconstructs volumes (3D tasks only)"
    if solver == "l1-wavelet" and not (task.kind == "mri" and task.dims == 2):
        return "l1-wavelet is a 2D Cartesian MRI solver"
    if solver == "fbp" and task.kind != "ct":
        return "fbp is a CT solver"
    if prior is not None:
        ch = getattr(prior, "channels", None)
        if ch is not None and ch != task.channels:
            return f"prior has {ch} channel(s), task images have {task.channels}"
        if task.dims == 3 and getattr(prior, "spatial_dims", 2) != 3:
            return "needs a prior that takes volumes (a 3D prior, or a 2D prior lifted slice by slice)"
        cond = (getattr(prior, "info", None) or {}).get("conditional") if getattr(prior, "cond_channels", 0) else None
        if (solver == "conditional-dc") != bool(cond):
            return "conditional-dc needs a conditional prior" if cond is None else "the prior is conditional (conditional-dc only)"
        if cond and (cond.get("kind") != task.kind or task.dims != 2):
            return f"the conditional prior was trained for 2D {str(cond.get('kind')).upper()} operators"
    return None


__all__ = ["BenchTask", "TASKS", "get_task", "applicable", "volume_phantoms"]
