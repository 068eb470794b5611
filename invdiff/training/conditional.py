r"""Conditional priors in ``invdiff train-prior --conditional mri|ct``: everything :mod:`invdiff.training` needs
beyond its unconditional path, in one place (its hooks in config, data, loop and export are marked
``# conditional hook``).

The network :math:`D_\theta(x, \sigma, c)` is the EDM denoiser of :class:`~invdiff.priors.neural.NeuralPrior` with
the conditioning ``c`` concatenated to its input (``cond_channels``); the loss is the same EDM loss (Karras et
al. 2022, Eq. 2) on paired data :math:`(x_0/s, c)` from :class:`invdiff.datasets.paired.PairedStream`:
``c = [A^dagger y / s, sampling pattern]`` for a random operator ``A`` per image, ``s`` the per-slice scale
(:func:`invdiff.operators.conditioning.measurement_conditioning`, shared with the ``"conditional-dc"`` solver).

Warm start from an unconditional prior (``--init-from mri-brainphantom-64``): every weight is copied and the
input convolution gets zero weights for the extra conditioning channels (:func:`widen_init_weights`), so
training starts exactly at the unconditional denoiser and learns to use the conditioning.

The exported prior records what it was trained for in ``info["conditional"]`` (kind, channels,
normalisation, operator distribution); solvers read it from there (:func:`conditional_meta`).
"""
from __future__ import annotations

import torch

from .._validate import check_choice, fail

KINDS = ("mri", "ct")
#: conditioning channels per kind: [A^dagger y (2 complex / 1 real), sampling pattern]
COND_CHANNELS = {"mri": 3, "ct": 2}
IMAGE_CHANNELS = {"mri": 2, "ct": 1}


def check_config(cfg) -> None:
    """Validate ``cfg.conditional`` and set / check ``cfg.cond_channels`` (called by ``validate_config``)."""
    if not cfg.conditional:
        return
    check_choice("conditional", cfg.conditional, KINDS)
    want = COND_CHANNELS[cfg.conditional]
    if cfg.cond_channels == 0:
        cfg.cond_channels = want
    elif cfg.cond_channels != want:
        fail("cond_channels", f"{want} for --conditional {cfg.conditional} ([A^dagger y, sampling pattern]) or 0 "
                              "(set automatically)", cfg.cond_channels)
    if cfg.dims != 2:
        fail("dims", "2 for a conditional prior (2D operators)", cfg.dims)
    if getattr(cfg, "patch_size", 0):
        fail("patch_size", "0 for a conditional prior (whole images: the conditioning is a whole-image measurement)",
             cfg.patch_size)


def make_source(cfg, base):
    """The paired training source on top of the configured clean-image source ``base``."""
    from ..datasets.paired import PairedStream

    return PairedStream(base, cfg.conditional, seed=cfg.seed)


def init_config_matches(cfg, init_net_config: dict, want: dict) -> bool:
    """A warm start may begin from the same network without conditioning (``cond_channels`` 0)."""
    if not cfg.conditional:
        return False
    return int(init_net_config.get("cond_channels", 0)) == 0 and dict(init_net_config, cond_channels=want["cond_channels"]) == want


def widen_init_weights(state: dict, net: torch.nn.Module) -> dict:
    """Unconditional weights -> conditional network: the input convolution's new input channels (the
    conditioning) get zero weights, so the widened network computes exactly the unconditional function."""
    target = net.state_dict()
    out = dict(state)
    for k, v in state.items():
        t = target.get(k)
        if t is None or tuple(t.shape) == tuple(v.shape):
            continue
        if k == "conv_in.weight" and v.dim() == t.dim() and v.shape[0] == t.shape[0] and v.shape[1] < t.shape[1] \
                and tuple(v.shape[2:]) == tuple(t.shape[2:]):
            w = torch.zeros(t.shape, dtype=v.dtype)
            w[:, :v.shape[1]] = v
            out[k] = w
        else:
            fail("init_from", f"weights of the configured network (tensor {k} of shape {tuple(t.shape)})",
                 f"shape {tuple(v.shape)}")
    return out


def info(cfg) -> dict:
    """What a conditional prior was trained for (``info["conditional"]`` of the exported prior)."""
    from ..datasets.paired import PairedStream

    src = PairedStream(lambda step, b: None, cfg["conditional"] if isinstance(cfg, dict) else cfg.conditional,
                       seed=int(cfg["seed"] if isinstance(cfg, dict) else cfg.seed))
    return src.describe()


#: held-out settings of the model card: (label, operator factory args)
CARD_SETTINGS = {
    "mri": [("4x random, 1 coil", dict(acceleration=4, coils=1)), ("4x random, 8 coils", dict(acceleration=4, coils=8)),
            ("8x random, 1 coil", dict(acceleration=8, coils=1)), ("8x random, 8 coils", dict(acceleration=8, coils=8))],
    "ct": [("8 views", dict(views=8, angle_range=180.0)), ("32 views", dict(views=32, angle_range=180.0)),
           ("32 views over 90 deg", dict(views=32, angle_range=90.0))],
}
CARD_NOISE = {"mri": 0.005, "ct": 0.001}


def card_operator(kind: str, size: int, setting: dict, index: int):
    """The fixed held-out operator of a model-card setting (mask seed = ``index``; noise std :data:`CARD_NOISE`)."""
    from ..operators import CT, MRI, MultiCoilMRI, random_mask_1d

    g = torch.Generator().manual_seed(1000 + index)
    if kind == "mri":
        mask = random_mask_1d((size, size), setting["acceleration"], seed=index)
        if setting["coils"] == 1:
            return MRI(mask, (2, size, size), sigma=CARD_NOISE[kind], rng=g)
        return MultiCoilMRI(mask, setting["coils"], (2, size, size), sigma=CARD_NOISE[kind], rng=g)
    return CT(size, n_views=min(setting["views"], size), angle_range=setting["angle_range"], sigma=CARD_NOISE[kind], rng=g)


class _WithCond:
    """The conditional denoiser D(x, sigma, c) at a fixed c, called like an unconditional prior (for the sampler)."""

    def __init__(self, prior, cond):
        self.prior, self.cond = prior, cond
        self.sigma_data, self.data_shift = prior.sigma_data, prior.data_shift

    def __call__(self, x, sigma):
        return self.prior.denoise(x, sigma, self.cond)


@torch.no_grad()
def evaluate(prior, cfg: dict, *, n_images: int = 64, sample_steps: int = 32, n_show: int = 4):
    """Held-out reconstructions for the model card: per setting of :data:`CARD_SETTINGS`, PSNR (peak 1, complex
    error) of the normalised-and-rescaled :math:`A^\dagger y` and of one conditional EDM Heun sample (no data
    consistency: the network alone), over ``n_images`` held-out phantoms. Returns (eval dict, grid images)."""
    from ..operators.conditioning import denormalise, measurement_conditioning
    from ..datasets.phantoms import GENERATORS, split_seeds
    from ..schedules import trained_sigma_max
    from .export import edm_heun_sampler, psnr

    kind, size = cfg["conditional"], int(cfg["size"])
    x = GENERATORS[cfg["data"] if cfg["data"] in GENERATORS else kind](split_seeds("heldout", n_images, start=700_000), size)
    # start where the solver starts: the top of the trained noise range (conditional-dc's default sigma_max)
    sigma_max = trained_sigma_max(prior.sigma_data, cfg.get("p_mean"), cfg.get("p_std"))
    rows, grid = [], None
    for i, (label, setting) in enumerate(CARD_SETTINGS[kind]):
        op = card_operator(kind, size, setting, i)
        y = op(x)
        cond, s = measurement_conditioning(y, op)
        g = torch.Generator().manual_seed(i)
        sample = torch.cat([edm_heun_sampler(_WithCond(prior, cond[j:j + 16]), (min(16, n_images - j), prior.channels, size, size),
                                             steps=sample_steps, sigma_max=sigma_max, generator=g)
                            for j in range(0, n_images, 16)])
        zf = denormalise(cond[:, :-1], s)
        rec = denormalise(sample, s)
        rows.append({"setting": label, "noise_sigma": CARD_NOISE[kind], "adjoint_psnr": float(psnr(zf, x).mean()),
                     "sample_psnr": float(psnr(rec, x).mean())})
        if i == 1:
            k = min(n_show, n_images, 8)  # at most 8 columns
            grid = torch.cat([x[:k], zf[:k], rec[:k]])
    return {"kind": kind, "n_images": n_images, "sample_steps": sample_steps, "sigma_max": sigma_max,
            "heldout_seeds": f"[{split_seeds('heldout', 1, start=700_000)[0]}, {split_seeds('heldout', 1, start=700_000)[0] + n_images})",
            "rows": rows, "grid_setting": CARD_SETTINGS[kind][1][0]}, grid


def loss_note(text: str, start: int) -> str:
    """After the loss table of a warm-started conditional card: which rows are the unconditional run."""
    if not start or "\nRegenerate (" not in text:
        return text
    note = (f"Rows up to step {start} are the unconditional run this one started from (its loss log, carried over); "
            f"from step {start + 1} the conditional loss on normalised targets x0 / s, whose level is not comparable.\n\n")
    return text.replace("\nRegenerate (", "\n" + note + "Regenerate (", 1)


def card(text: str, cfg: dict, ev: dict, *, sample_steps: int, t_sample: float, step: int | None = None) -> str:
    """The model card of a conditional prior: the unconditional card with a conditioning section and held-out
    reconstructions in place of the unconditional denoising table and samples."""
    from ..operators.conditioning import NORMALISATION

    kind = cfg["conditional"]
    d = info(cfg)
    dist = d["operator_distribution"]
    text = text.replace("Unconditional diffusion prior (denoiser D(x, sigma) ~ E[x0 | x0 + sigma n = x]",
                        "Conditional diffusion prior (denoiser D(x, sigma, c) ~ E[x0 | x0 + sigma n = x, c]")
    adag = ("zero-filled coil-combined A^H y (2 channels)" if kind == "mri" else "filtered back-projection (1 channel)")
    pattern = ("the k-space sampling mask" if kind == "mri" else
               "the k-space lines of the views (Fourier slice theorem), `invdiff.operators.conditioning.ct_view_pattern`")
    ops = (f"mask family in {list(dist['families'])}, acceleration uniform in {list(dist['acceleration'])} with "
           f"fastMRI centre fractions (0.08 below 8x, 0.04 from 8x), coils {list(dist['coils'])} (1 = single coil, "
           f"else birdcage maps), k-space noise std log-uniform in [{dist['sigma_min']}, {dist['sigma_max']}]"
           if kind == "mri" else
           f"parallel beam, view count log-uniform in {list(dist['views'])} over 180 degrees, or with probability "
           f"{dist['p_limited']} a limited angle range from {list(dist['limited_ranges'])} degrees, sinogram noise std "
           f"log-uniform in [{dist['sigma_min']}, {dist['sigma_max']}]")
    start, steps_line = int(cfg.get("init_step") or 0), []
    if step is not None and start and cfg.get("init_from"):
        steps_line = [f"- conditional training: {step - start} steps on paired data (steps {start + 1}-{step}) after the "
                      f"warm start from `{cfg['init_from']}` at step {start} (its unconditional steps 1-{start})"
                      + (f"; stopped {int(cfg['steps']) - step} steps before the planned {cfg['steps']}"
                         if step < int(cfg["steps"]) else "")]
    cond_section = "\n".join([
        "## Conditioning", "",
        f"- trained for **{kind.upper()}** operators; `cond_channels = {d['cond_channels']}`: [{adag}, {pattern}]",
        f"- normalisation (one per slice, identical in training and in `solver=\"conditional-dc\"`, both call "
        f"`invdiff.operators.conditioning.measurement_conditioning`): {NORMALISATION}",
        f"- paired data made on the fly (`invdiff.datasets.paired.PairedStream`, seed {cfg['seed']}): per training image "
        f"a random operator: {ops}; y = A x + n; target x / s",
        *steps_line,
        "- stored in the prior's metadata as `info['conditional']`; use it with "
        "`invdiff.solve(y, physics, prior, solver=\"conditional-dc\")`", "", ""])
    text = text.replace("## Training data\n", cond_section + "## Training data\n", 1)
    text = loss_note(text, start)
    head = ["## Held-out reconstructions", "",
            f"PSNR (dB, peak 1{', complex error' if kind == 'mri' else ''}) averaged over {ev['n_images']} held-out "
            f"phantoms (seeds {ev['heldout_seeds']}); one fixed random operator per setting, noise std "
            f"{CARD_NOISE[kind]}. A^dagger y = the conditioning image times s; sample = one conditional EDM Heun sample "
            f"({sample_steps} steps, {2 * sample_steps - 1} NFE, from sigma_max {ev.get('sigma_max', float('nan')):.3g}, the top "
            f"of the trained noise range, as the solver starts) **without data consistency** (the network alone; with "
            "DC see `benchmarks/results/conditional_dc.md`).", "",
            "| setting | A^dagger y | conditional sample (no DC) |", "|---|---:|---:|"]
    head += [f"| {r['setting']} | {r['adjoint_psnr']:.2f} | **{r['sample_psnr']:.2f}** |" for r in ev["rows"]]
    text = text.replace("## Samples\n", "\n".join(head) + "\n\n## Samples\n", 1)
    import re
    text = re.sub(r"`([^`]*)_samples.png`: .*? s on CPU\.",
                  lambda m: f"`{m.group(1)}_samples.png`: {ev['grid_setting']}, held-out phantoms; rows: truth, A^dagger y, "
                            f"one conditional sample (no DC), EDM Heun {sample_steps} steps; evaluation and grid "
                            f"{t_sample:.1f} s on CPU.", text, count=1, flags=re.S)
    return text


__all__ = ["KINDS", "COND_CHANNELS", "check_config", "make_source", "init_config_matches", "widen_init_weights", "info",
           "CARD_SETTINGS", "card_operator", "evaluate", "card", "loss_note"]
