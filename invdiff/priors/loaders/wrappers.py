"""Wrappers of a loaded network into the invdiff denoiser contract ``D(x, sigma)`` on [0, 1] data: discrete VP
(eps / v / sample prediction at a timestep) and preconditioned (EDM Table 1: edm, ve, vp coefficients); the
helpers every format's builder shares (frozen eval-mode prior, class labels, short architecture strings)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ... import schedules as S
from ..base import Prior
from ..neural import edm_coefficients
from .detect import CheckpointError, _Config


# =====================================================================================================
# wrappers into the invdiff contract
# =====================================================================================================
def _sigma_batch(sigma, x: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
    if s.numel() == 1:
        s = s.expand(x.shape[0])
    if s.numel() != x.shape[0]:
        raise ValueError(f"argument 'sigma': expected a scalar or {x.shape[0]} values (one per image), received {s.numel()}")
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError(f"argument 'sigma': expected finite values >= 0, received {s.tolist()[:8]}")
    return s


def _bc(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return S._bcast(c, x)


class _CheckpointPrior(Prior):
    """Shared metadata and input checks of checkpoint priors."""

    def _setup(self, *, channels, resolution, centered, value_range, size_multiple, name, info):
        self.channels = int(channels)
        self.resolution = tuple(int(r) for r in resolution) if resolution is not None else None
        self.value_range = tuple(value_range) if value_range is not None else None
        self.centered = bool(centered)
        self.native_affine = (2.0, -1.0) if centered else (1.0, 0.0)
        self.size_multiple = int(size_multiple)
        self._name = name
        self.info = dict(info)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        x = self.check_input(x)
        m = self.size_multiple
        if m > 1 and (x.shape[-1] % m or x.shape[-2] % m):
            raise ValueError(f"argument 'x': expected height and width divisible by {m} for prior {self.name!r} "
                             f"(its UNet downsamples {int(math.log2(m))} times), received {tuple(x.shape)}")
        return x

    def _to_native(self, x, s):
        a, b = self.native_affine
        return a * x + b, a * s

    def _from_native(self, d):
        a, b = self.native_affine
        return (d - b) / a


class DiscreteVPPrior(_CheckpointPrior):
    r"""A network trained on a discrete DDPM (VP) schedule, as an invdiff denoiser.

    ``net(x_vp, t)`` predicts ``prediction`` ('epsilon', 'v_prediction' or 'sample') from the VP state
    :math:`x_{vp} = \sqrt{\bar\alpha_t} x_0 + \sqrt{1-\bar\alpha_t}\epsilon` in the network's native range.
    See the module docstring for the equations. ``train_sigmas`` are the data-space noise levels of the
    training timesteps (a solver that passes these hits the training grid exactly).
    """

    def __init__(self, net: nn.Module, alpha_bars: torch.Tensor, *, prediction: str = "epsilon",
                 timestep: str = "interpolate", timestep_scale: float = 1.0, channels: int, resolution=None,
                 centered: bool = True, value_range=(0.0, 1.0), size_multiple: int = 1, name: str = "checkpoint",
                 info: dict | None = None):
        super().__init__()
        if prediction not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"argument 'prediction': expected one of ['epsilon', 'sample', 'v_prediction'], received {prediction!r}")
        if timestep not in ("interpolate", "nearest"):
            raise ValueError(f"argument 'timestep': expected 'interpolate' or 'nearest', received {timestep!r}")
        self.net = net
        self.prediction = prediction
        self.timestep_mode = timestep
        self.timestep_scale = float(timestep_scale)
        ab = torch.as_tensor(alpha_bars, dtype=torch.float64)
        self.register_buffer("log_sigmas", S.alpha_bar_to_sigma(ab).log())
        self._setup(channels=channels, resolution=resolution, centered=centered, value_range=value_range,
                    size_multiple=size_multiple, name=name, info=info or {})

    @property
    def train_sigmas(self) -> torch.Tensor:
        """Data-space sigma of each training timestep t = 0..T-1."""
        return self.log_sigmas.exp() / self.native_affine[0]

    def timestep(self, sigma_native: torch.Tensor) -> torch.Tensor:
        """(Fractional) training timestep whose native noise level is ``sigma_native``; clamped to [0, T-1]."""
        ls = self.log_sigmas
        q = sigma_native.to(ls.dtype).clamp_min(1e-30).log()
        if self.timestep_mode == "nearest":
            return (q[:, None] - ls[None, :]).abs().argmin(dim=1).to(ls.dtype)
        hi = torch.searchsorted(ls, q).clamp(1, ls.numel() - 1)
        lo = hi - 1
        w = ((q - ls[lo]) / (ls[hi] - ls[lo])).clamp(0.0, 1.0)
        return lo.to(ls.dtype) + w

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        x = self._check(x)
        s = _sigma_batch(sigma, x)
        xn, sn = self._to_native(x, s)
        ab = S.sigma_to_alpha_bar(sn)                                     # alpha_bar = 1/(1+sigma_n^2)
        x_vp = _bc(ab.sqrt(), xn) * xn                                    # x_vp = sqrt(ab) x_n
        t = (self.timestep(sn) * self.timestep_scale).to(torch.float32)
        dtype = next(self.net.parameters()).dtype
        out = self.net(x_vp.to(dtype), t)[:, : self.channels].to(x.dtype)
        if self.prediction == "epsilon":
            d = S.eps_to_x0(xn, out, sn)                                  # D_n = x_n - sigma_n eps
        elif self.prediction == "v_prediction":
            d = S.v_to_x0(x_vp, out, ab)                                  # D_n = sqrt(ab) x_vp - sqrt(1-ab) v
        else:
            d = out
        return self._from_native(d)


@dataclass(frozen=True)
class EDMCoefficients:
    """EDM preconditioning (Karras et al. 2022, Table 1, "Ours")."""

    sigma_data: float = 0.5

    def __call__(self, sigma):
        return edm_coefficients(sigma, self.sigma_data)


@dataclass(frozen=True)
class VECoefficients:
    """VE preconditioning (Karras et al. 2022, Table 1, VE column): c_noise = ln(noise_scale * sigma).

    noise_scale = 0.5 for EDM's VEPrecond; 1 for score_sde's NCSN++ (Fourier features of ln sigma).
    """

    noise_scale: float = 0.5

    def __call__(self, sigma):
        one = torch.ones_like(sigma)
        return one, sigma, one, (self.noise_scale * sigma).clamp_min(1e-20).log()


@dataclass(frozen=True)
class VPCoefficients:
    """VP preconditioning (Karras et al. 2022, Table 1, VP column; Song et al. 2021 continuous VP SDE)."""

    beta_min: float = 0.1
    beta_d: float = 19.9
    M: int = 1000

    def __call__(self, sigma):
        one = torch.ones_like(sigma)
        t = ((self.beta_min ** 2 + 2 * self.beta_d * torch.log1p(sigma ** 2)).sqrt() - self.beta_min) / self.beta_d
        return one, -sigma, 1 / (1 + sigma ** 2).sqrt(), (self.M - 1) * t


class PreconditionedPrior(_CheckpointPrior):
    r"""A network ``F(c_in x_n, c_noise)`` with preconditioning ``coefficients(sigma_n) -> (c_skip, c_out, c_in, c_noise)``:
    :math:`D_n = c_{skip} x_n + c_{out} F`, in the network's native range (see the module docstring).
    """

    def __init__(self, net: nn.Module, coefficients: Callable, *, channels: int, resolution=None,
                 centered: bool = True, value_range=(0.0, 1.0), size_multiple: int = 1, name: str = "checkpoint",
                 info: dict | None = None):
        super().__init__()
        self.net = net
        self.coefficients = coefficients
        self._setup(channels=channels, resolution=resolution, centered=centered, value_range=value_range,
                    size_multiple=size_multiple, name=name, info=info or {})

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        x = self._check(x)
        s = _sigma_batch(sigma, x)
        xn, sn = self._to_native(x, s)
        c_skip, c_out, c_in, c_noise = self.coefficients(sn)
        dtype = next(self.net.parameters()).dtype
        f = self.net((_bc(c_in, xn) * xn).to(dtype), c_noise.to(dtype))[:, : self.channels].to(x.dtype)
        return self._from_native(_bc(c_skip, xn) * xn + _bc(c_out, xn) * f)


class _UNetCall(nn.Module):
    """Adapter: ``forward(u, c_noise)`` -> ``unet.forward_unet(scale * u + shift, c_noise, class_labels)``."""

    def __init__(self, unet: nn.Module, label: torch.Tensor | None = None, input_affine=(1.0, 0.0)):
        super().__init__()
        self.unet = unet
        self.register_buffer("label", label)
        self.input_affine = tuple(float(v) for v in input_affine)

    def forward(self, u, c_noise):
        a, b = self.input_affine
        if (a, b) != (1.0, 0.0):
            u = a * u + b
        labels = None if self.label is None else self.label.expand(u.shape[0], -1)
        return self.unet.forward_unet(u, c_noise.reshape(-1), class_labels=labels)


class _TimestepCall(nn.Module):
    """Adapter: ``forward(x_vp, t)`` for guided-diffusion (``unet(x, t, y)``) and diffusers (``unet(x, t).sample``)."""

    def __init__(self, unet: nn.Module, label: torch.Tensor | None = None, kind: str = "guided-diffusion",
                 output_times_label: bool = False):
        super().__init__()
        self.unet = unet
        self.register_buffer("label", label)
        self.kind = kind
        self.output_times_label = output_times_label

    def forward(self, x, t):
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.reshape(-1)
        y = None if self.label is None else self.label.expand(x.shape[0])
        if self.kind == "diffusers":
            out = self.unet(x, t, class_labels=y).sample
        else:
            out = self.unet(x, t, y)
        if self.output_times_label:                # diffusers VE nets return score = F / sigma
            out = out * _bc(t, out)
        return out


def _freeze(prior: Prior, device) -> Prior:
    prior = prior.to(device).eval()
    for p in prior.parameters():
        p.requires_grad_(False)
    return prior


def _n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# =====================================================================================================
# helpers and the entry point
# =====================================================================================================
def _pair(r) -> tuple[int, int]:
    if isinstance(r, (list, tuple)):
        return (int(r[0]), int(r[1])) if len(r) == 2 else (int(r[0]), int(r[0]))
    return (int(r), int(r))


def _short(arch: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in arch.items() if v not in (None, 0, False) or k in ("in_channels",))


def _class_label(cfg: _Config, n_classes, source, *, one_hot: bool):
    if not n_classes:
        if cfg.get("class_label") is not None:
            raise CheckpointError(f"cannot load '{source}': class_label given but the network is unconditional")
        return None
    c = cfg.get("class_label")
    if c is None:
        raise CheckpointError(f"cannot load '{source}': the network is class-conditional ({n_classes} classes); "
                              f"pass class_label=<int in [0, {n_classes - 1}]> to get a prior for one class")
    if not isinstance(c, int) or not 0 <= c < n_classes:
        raise CheckpointError(f"class_label: expected an int in [0, {n_classes - 1}], received {c!r}")
    if one_hot:
        return torch.nn.functional.one_hot(torch.tensor([c]), n_classes).float()
    return torch.tensor([c])


