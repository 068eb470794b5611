r"""Noise schedules and prediction conversions, written once for the whole library.

invdiff priors are *denoisers* in the variance-exploding (EDM) parameterisation

.. math::  D(x, \sigma) \approx \mathbb{E}[x_0 \mid x_0 + \sigma n = x],\qquad n\sim\mathcal N(0, I),

with :math:`x_0` in the prior's data space (real images in [0, 1], complex images as 2 channels).
A VP (DDPM) state :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon` is the VE state
:math:`x_t/\sqrt{\bar\alpha_t}` at :math:`\sigma_t = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}` (Karras et al. 2022, Eq. 4 / Table 1),
so every schedule reduces to a pair ``(scale s_t, sigma_t)`` with :math:`x_t = s_t (x_0 + \sigma_t n)`.

Conversions (Tweedie, Efron 2011): :math:`\nabla\log p_\sigma(x) = (D(x,\sigma) - x)/\sigma^2`,
:math:`\epsilon = (x - D)/\sigma`, v-prediction :math:`v = \sqrt{\bar\alpha}\epsilon - \sqrt{1-\bar\alpha}x_0`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._validate import check_positive, fail


# --------------------------------------------------------------------------------------------
# prediction conversions (all in the VE variable x = x0 + sigma * n)
# --------------------------------------------------------------------------------------------
def _bcast(sigma, x: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.dim() == 0:
        return sigma
    return sigma.reshape(-1, *([1] * (x.dim() - 1)))


def x0_to_eps(x: torch.Tensor, x0: torch.Tensor, sigma) -> torch.Tensor:
    return (x - x0) / _bcast(sigma, x)


def eps_to_x0(x: torch.Tensor, eps: torch.Tensor, sigma) -> torch.Tensor:
    return x - _bcast(sigma, x) * eps


def x0_to_score(x: torch.Tensor, x0: torch.Tensor, sigma) -> torch.Tensor:
    return (x0 - x) / _bcast(sigma, x) ** 2


def score_to_x0(x: torch.Tensor, score: torch.Tensor, sigma) -> torch.Tensor:
    return x + _bcast(sigma, x) ** 2 * score


def v_to_x0(x_vp: torch.Tensor, v: torch.Tensor, alpha_bar) -> torch.Tensor:
    """x0 from a v-prediction on the VP state x_vp = sqrt(ab) x0 + sqrt(1-ab) eps."""
    ab = _bcast(alpha_bar, x_vp)
    return ab.sqrt() * x_vp - (1 - ab).sqrt() * v


def x0_to_v(x_vp: torch.Tensor, x0: torch.Tensor, alpha_bar) -> torch.Tensor:
    ab = _bcast(alpha_bar, x_vp)
    eps = (x_vp - ab.sqrt() * x0) / (1 - ab).sqrt()
    return ab.sqrt() * eps - (1 - ab).sqrt() * x0


def sigma_to_alpha_bar(sigma):
    """VP cumulative alpha for a VE noise level: alpha_bar = 1 / (1 + sigma^2)."""
    return 1.0 / (1.0 + torch.as_tensor(sigma) ** 2)


def alpha_bar_to_sigma(alpha_bar):
    ab = torch.as_tensor(alpha_bar)
    return ((1 - ab) / ab).sqrt()


# --------------------------------------------------------------------------------------------
# schedules
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VPSchedule:
    r"""DDPM linear-beta VP schedule (Ho et al. 2020, Sec. 4): :math:`\beta_i` linear in [beta_start, beta_end]
    over ``num_train_timesteps`` steps, :math:`\bar\alpha_t=\prod_{i\le t}(1-\beta_i)`.

    Timesteps are integers 0..T-1 (t=0 is the least noisy). ``sigma(t)`` is the equivalent VE level.

    >>> s = VPSchedule(); round(float(s.sigma(999)))
    157
    """

    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_train_timesteps: int = 1000

    def betas(self) -> torch.Tensor:
        return torch.linspace(self.beta_start, self.beta_end, self.num_train_timesteps, dtype=torch.float64)

    def alpha_bars(self) -> torch.Tensor:
        return torch.cumprod(1.0 - self.betas(), dim=0)

    def alpha_bar(self, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.long)
        return self.alpha_bars()[t]

    def sigma(self, t) -> torch.Tensor:
        return alpha_bar_to_sigma(self.alpha_bar(t))

    def scale(self, t) -> torch.Tensor:
        return self.alpha_bar(t).sqrt()

    def timesteps(self, num_steps: int, t_max: int | None = None) -> torch.Tensor:
        """Descending, evenly spaced integer timesteps (DDIM "uniform" skip, Song et al. 2021 Sec. 4.2)."""
        check_positive("num_steps", num_steps, integer=True)
        t_max = self.num_train_timesteps - 1 if t_max is None else t_max
        if num_steps > t_max + 1:
            fail("num_steps", f"at most {t_max + 1} for this schedule", num_steps)
        return torch.linspace(t_max, 0, num_steps).round().long()

    def timestep_for_sigma(self, sigma) -> torch.Tensor:
        """Nearest training timestep for a VE noise level."""
        sig = self.sigma(torch.arange(self.num_train_timesteps))
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
        return (sig.reshape(1, -1).log() - sigma.log()).abs().argmin(dim=1)


@dataclass(frozen=True)
class VESchedule:
    r"""Geometric VE schedule (Song et al. 2021, Eq. 31): :math:`\sigma(t)=\sigma_{min}(\sigma_{max}/\sigma_{min})^t`, t in [0, 1]."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def sigma(self, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def scale(self, t) -> torch.Tensor:
        return torch.ones_like(torch.as_tensor(t, dtype=torch.float64))

    def sigmas(self, num_steps: int) -> torch.Tensor:
        check_positive("num_steps", num_steps, integer=True)
        return self.sigma(torch.linspace(1, 0, num_steps, dtype=torch.float64))


@dataclass(frozen=True)
class EDMSchedule:
    r"""EDM noise levels (Karras et al. 2022, Eq. 5): :math:`\sigma_i = (\sigma_{max}^{1/\rho} + \tfrac{i}{N-1}(\sigma_{min}^{1/\rho}-\sigma_{max}^{1/\rho}))^\rho`.

    Defaults are for images in [0, 1] (EDM's 0.002..80 on [-1, 1] halved).
    """

    sigma_min: float = 0.001
    sigma_max: float = 40.0
    rho: float = 7.0

    def sigmas(self, num_steps: int) -> torch.Tensor:
        check_positive("num_steps", num_steps, integer=True)
        if num_steps == 1:
            return torch.tensor([self.sigma_max], dtype=torch.float64)
        i = torch.arange(num_steps, dtype=torch.float64)
        a, b = self.sigma_max ** (1 / self.rho), self.sigma_min ** (1 / self.rho)
        return (a + i / (num_steps - 1) * (b - a)) ** self.rho


#: how far above the mean of the training ln(sigma) the top of a prior's trained noise range lies, in standard
#: deviations (2: the 97.7th percentile of the training noise levels)
TRAINED_SIGMA_SDS = 2.0


def trained_sigma_max(sigma_data: float, p_mean: float | None, p_std: float | None) -> float:
    r"""The top of the noise range an EDM-trained network has seen:
    :math:`\min(80\,\sigma_d/0.5,\ \exp(P_{mean} + 2 P_{std}))` (training draws :math:`\ln\sigma \sim
    \mathcal N(P_{mean}, P_{std}^2)`); EDM's :math:`80\,\sigma_d/0.5` when the training distribution is unknown.

    >>> round(trained_sigma_max(0.271, -1.812, 1.2), 2)  # exp(-1.812 + 2.4)
    1.8
    >>> trained_sigma_max(0.3, None, None)
    48.0
    """
    edm = 80.0 * float(sigma_data) / 0.5
    if p_mean is None or p_std is None:
        return edm
    return min(edm, math.exp(float(p_mean) + TRAINED_SIGMA_SDS * float(p_std)))


def get_schedule(name: str, **kwargs):
    table = {"vp": VPSchedule, "ve": VESchedule, "edm": EDMSchedule}
    if name not in table:
        fail("schedule", f"one of {sorted(table)}", name)
    return table[name](**kwargs)


__all__ = [
    "VPSchedule", "VESchedule", "EDMSchedule", "get_schedule", "trained_sigma_max", "TRAINED_SIGMA_SDS",
    "x0_to_eps", "eps_to_x0", "x0_to_score", "score_to_x0", "v_to_x0", "x0_to_v",
    "sigma_to_alpha_bar", "alpha_bar_to_sigma",
]
