r"""DDS: decomposed diffusion sampling (Chung, Lee & Ye, ICLR 2024).

Each reverse step of a VP diffusion (DDPM linear betas, T = 1000) on :math:`x_t=\sqrt{\bar\alpha_t}x_0+\sqrt{1-\bar\alpha_t}\epsilon`:

1. :math:`\hat\epsilon = \epsilon_\theta(x_t, t)`                                           (paper Eq. 9)
2. Tweedie: :math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\hat\epsilon)/\sqrt{\bar\alpha_t}`   (Eq. 10)
3. Data consistency in the Krylov subspace around :math:`\hat x_0`: M conjugate-gradient steps initialised at
   :math:`\hat x_0` on (Eq. 14-16)

   - ``dc="prox"``: :math:`(I+\gamma A^\top A)x = \hat x_0 + \gamma A^\top y`  (noisy measurements)
   - ``dc="ls"``:   :math:`A^\top A x = A^\top y`                              (noiseless measurements)
4. Re-noise with the *original* :math:`\hat\epsilon` (the "decomposition") and DDS's own :math:`\eta` (Eq. 17):
   :math:`x_{t'} = \sqrt{\bar\alpha_{t'}}\tilde x_0 + \sqrt{1-\bar\alpha_{t'}}(\eta z + \sqrt{1-\eta^2}\hat\epsilon)`.
   DDS's :math:`\eta` is not DDIM's :math:`\eta` (reference dossier §3.10-6). The last step returns :math:`\tilde x_0`.

Timestep grid as the released code: ``ts = range(0, T, T // num_steps)`` visited in descending order, with
:math:`\bar\alpha_{-1} = 1` at the end. ``num_steps`` network calls (the paper's "49 NFE" is ``num_steps=50``).

Not reproduced from the released code (dossier §3.10): the complex CG without conjugation, whole-batch inner
products, the broken MRI noiseless/noisy branches. CG here is per-sample and conjugated (:mod:`.primitives`).

Chains: ``n_samples`` independent chains run batched through the prior (one network call per step for all).

Example:
    >>> import torch, invdiff
    >>> from invdiff.operators import MatrixOperator
    >>> from invdiff.priors import GaussianMixture
    >>> prior = GaussianMixture(torch.ones(1), torch.zeros(1, 4), torch.eye(4)[None])
    >>> op = MatrixOperator(torch.eye(4)[:2], sigma=0.1)
    >>> rec = invdiff.solve(op.A(torch.ones(1, 4)), op, prior, solver="dds", num_steps=20)
    >>> rec.nfe
    20
"""
from __future__ import annotations

import torch

from .._validate import check_choice, check_in_range, check_positive
from ..schedules import VPSchedule
from .base import SolverOutput, chains_batch, chains_unbatch, progress_bar, register
from .primitives import conjugate_gradient, noise_sigma

#: paper's eta per step budget (Sec. 5, "eta = 0.15 / 0.5 / 0.8 for 19 / 49 / 99 NFE")
ETA_PRESETS = {20: 0.15, 50: 0.5, 100: 0.8}


def dds_timesteps(num_steps: int, schedule: VPSchedule) -> tuple[list[int], list[int]]:
    """Descending (t, t_prev) pairs of the released DDS/RED-Diff code; t_prev = -1 means alpha_bar = 1."""
    T = schedule.num_train_timesteps
    skip = T // num_steps
    ts = list(range(0, T, skip))
    prev = [-1] + ts[:-1]
    return ts[::-1], prev[::-1]


def dds_data_consistency(x0: torch.Tensor, y: torch.Tensor, physics, *, dc: str, gamma: float, cg_iters: int):
    """Step 3: M CG steps initialised at x0 (prox: (I + g A^T A) x = x0 + g A^T y; ls: A^T A x = A^T y)."""
    ATy = physics.A_adjoint(y)
    if dc == "prox":
        return conjugate_gradient(lambda v: v + gamma * physics.A_adjoint(physics.A(v)), x0 + gamma * ATy, x0=x0,
                                  max_iter=cg_iters)
    return conjugate_gradient(lambda v: physics.A_adjoint(physics.A(v)), ATy, x0=x0, max_iter=cg_iters)


@register("dds")
def dds(y, physics, prior, *, generator, n_samples=1, progress=False, num_steps: int = 50, eta: float | None = None,
        cg_iters: int = 5, gamma: float = 1.0, dc: str = "auto", data_consistency=None):
    r"""Decomposed diffusion sampler (see module docstring).

    Options: ``num_steps`` (NFE; presets 20/50/100), ``eta`` (DDS re-noising, default from the paper's preset for
    ``num_steps``, else 0.5), ``cg_iters`` M (paper: 5), ``gamma`` (prox weight), ``dc`` in {"auto", "prox", "ls"}
    ("auto": "prox" when the physics has Gaussian noise, else "ls"). ``data_consistency(x0, y, physics)`` overrides
    step 3 (used by the 3D z-TV augmentation).
    """
    check_positive("num_steps", num_steps, integer=True)
    check_positive("cg_iters", cg_iters, integer=True)
    check_positive("gamma", gamma)
    check_choice("dc", dc, ["auto", "prox", "ls"])
    eta = ETA_PRESETS.get(num_steps, 0.5) if eta is None else eta
    check_in_range("eta", eta, 0.0, 1.0)
    if dc == "auto":
        dc = "prox" if noise_sigma(physics) > 0 else "ls"
    sched = VPSchedule()
    if num_steps > sched.num_train_timesteps:
        check_in_range("num_steps", num_steps, 1, sched.num_train_timesteps)
    alpha_bars = sched.alpha_bars()

    def ab(t: int) -> float:
        return 1.0 if t < 0 else float(alpha_bars[t])

    yy = chains_batch(y, n_samples)
    with torch.no_grad():
        shape = physics.A_adjoint(yy).shape
    x = torch.randn(shape, generator=generator, device=y.device, dtype=y.dtype)
    ts, prev = dds_timesteps(num_steps, sched)
    with torch.no_grad():
        for t, t_prev in progress_bar(list(zip(ts, prev)), progress, "dds"):
            a, a_prev = ab(t), ab(t_prev)
            x0_hat = prior.x0_vp(x, a)                                   # Eq. 10 (Tweedie)
            eps_hat = (x - a ** 0.5 * x0_hat) / (1 - a) ** 0.5           # Eq. 9, as the network's epsilon
            if data_consistency is None:                                 # Eq. 14-16
                x0_dc = dds_data_consistency(x0_hat, yy, physics, dc=dc, gamma=gamma, cg_iters=cg_iters)
            else:
                x0_dc = data_consistency(x0_hat, yy, physics)
            if t_prev < 0:
                x = x0_dc
                break
            z = torch.randn(shape, generator=generator, device=y.device, dtype=y.dtype)
            x = a_prev ** 0.5 * x0_dc + (1 - a_prev) ** 0.5 * (eta * z + (1 - eta ** 2) ** 0.5 * eps_hat)  # Eq. 17
    samples = chains_unbatch(x, n_samples)
    return SolverOutput(mean=samples.mean(0), samples=samples,
                        info={"num_steps": num_steps, "eta": eta, "cg_iters": cg_iters, "gamma": gamma, "dc": dc})
