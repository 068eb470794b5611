"""Training data sources: callables ``source(step, batch_size)`` returning ``x0`` or ``(x0, cond)``.

The batch at step k depends only on k (resumed runs reproduce uninterrupted ones). A source may offer
``source.part(step, batch_size, start, stop)`` (rows ``[start, stop)`` alone; the phantom streams do), otherwise
:func:`batch_part` slices the whole batch. :func:`make_source` builds the source a :class:`TrainConfig` names
(phantom streams of :mod:`invdiff.datasets`, a tensor file, a folder of images); :func:`resolve_config` fills the
preconditioning (``sigma_data``, ``data_shift``, ``p_mean``) from the data.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from .._validate import fail
from .config import TrainConfig


# ================================================================================================
# data sources: callables (step, batch_size) -> x0 or (x0, cond)
# ================================================================================================
class TensorSource:
    """Random minibatches from an image tensor (N, C, H, W) or volume tensor (N, C, D, H, W); indices drawn
    from a per-step generator."""

    def __init__(self, images: torch.Tensor, seed: int = 0):
        if not isinstance(images, torch.Tensor) or images.dim() not in (4, 5):
            fail("images", "a tensor (N, C, H, W) or (N, C, D, H, W)", images)
        self.images, self.seed = images.float(), seed
        self.channels = images.shape[1]

    def _indices(self, step: int, batch_size: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.randint(len(self.images), (batch_size,), generator=g)

    def __call__(self, step: int, batch_size: int):
        return self.images[self._indices(step, batch_size)]

    def part(self, step: int, batch_size: int, start: int, stop: int):
        """Rows ``[start, stop)`` of ``self(step, batch_size)``."""
        return self.images[self._indices(step, batch_size)[start:stop]]


def batch_part(source: Callable, step: int, batch_size: int, start: int, stop: int):
    """Rows ``[start, stop)`` of ``source(step, batch_size)`` (x0 or (x0, cond)): a data-parallel rank's shard.

    Uses ``source.part`` when the source has one, generates only those seeds for a
    :class:`~invdiff.datasets.PhantomStream` (batch k holds seeds ``offset + k*B + i``), else slices the batch.
    """
    from ..datasets.phantoms import PhantomStream

    if start == 0 and stop == batch_size:
        return source(step, batch_size)
    if hasattr(source, "part"):
        return source.part(step, batch_size, start, stop)
    if type(source) is PhantomStream:
        return PhantomStream(source.kind, source.size, source.seed_offset + step * batch_size + start)(0, stop - start)
    x0, cond = _split(source(step, batch_size))
    return x0[start:stop] if cond is None else (x0[start:stop], cond[start:stop])


def _load_tensor_file(path: str) -> torch.Tensor:
    p = Path(path)
    if not p.is_file():
        fail("data", "an existing tensor file (tensor:FILE)", path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        d = load_file(str(p))
        if len(d) != 1:
            fail("data", "a safetensors file with exactly one tensor (N, C, H, W)", f"{path} with keys {sorted(d)}")
        return next(iter(d.values()))
    if p.suffix == ".npy":
        import numpy as np
        return torch.from_numpy(np.load(p, allow_pickle=False))
    if p.suffix in (".pt", ".pth"):
        return torch.load(p, map_location="cpu", weights_only=True)
    fail("data", "a .safetensors, .npy or .pt tensor file", path)


def _load_folder(path: str, size: int) -> torch.Tensor:
    import numpy as np
    from skimage import io, transform, color

    files = sorted(f for f in Path(path).glob("*") if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"))
    if not files:
        fail("data", "a folder with .png/.jpg/.tif images (folder:DIR)", path)
    imgs = []
    for f in files:
        im = io.imread(f)
        if im.ndim == 3:
            im = color.rgb2gray(im[..., :3])
        im = im.astype(np.float64)
        im = (im - im.min()) / max(im.max() - im.min(), 1e-12)
        imgs.append(transform.resize(im, (size, size), anti_aliasing=True).astype(np.float32))
    return torch.from_numpy(np.stack(imgs))[:, None]


def make_source(cfg: TrainConfig) -> Callable:
    """Data source of a config: a phantom / volume stream or random minibatches of a tensor / image folder
    (with ``cfg.conditional``: paired (x0, cond) data on top of it)."""
    if cfg.conditional:  # conditional hook
        from . import conditional
        return conditional.make_source(cfg, _make_image_source(cfg))
    return _make_image_source(cfg)


def _make_image_source(cfg: TrainConfig) -> Callable:
    from ..datasets.phantoms import PhantomStream
    from ..datasets.phantoms3d import VolumeStream

    if cfg.data in ("ct", "mri"):
        return PhantomStream(cfg.data, cfg.size)
    if cfg.data == "ct3d":
        return VolumeStream(cfg.data, cfg.size)
    if cfg.data.startswith("tensor:"):
        x = _load_tensor_file(cfg.data[len("tensor:"):])
        if x.dim() == cfg.dims + 1:
            x = x[:, None]
        if x.dim() != cfg.dims + 2:
            want = "(N, C, D, H, W) or (N, D, H, W)" if cfg.dims == 3 else "(N, C, H, W) or (N, H, W)"
            fail("data", f"a tensor {want} for dims={cfg.dims}", f"{cfg.data}: shape {tuple(x.shape)}")
        return TensorSource(x, cfg.seed)
    return TensorSource(_load_folder(cfg.data[len("folder:"):], cfg.size), cfg.seed)


def _split(batch):
    return batch if isinstance(batch, (tuple, list)) else (batch, None)


def estimate_data_stats(source: Callable, n: int = 256) -> tuple[int, float, float]:
    """(channels, mean, std) of ``n`` training images (batch 0 of size n): the preconditioning's mu and sigma_data."""
    x0, _ = _split(source(0, n))
    return int(x0.shape[1]), float(x0.mean()), float(x0.std())


def resolve_config(cfg: TrainConfig, source: Callable) -> tuple[TrainConfig, int]:
    """Fill sigma_data / data_shift / p_mean from the data (rounded, so configs read well) and return channels."""
    channels, mean, std = estimate_data_stats(source)
    if cfg.sigma_data is None:
        cfg.sigma_data = round(std, 3)
    if cfg.data_shift is None:
        cfg.data_shift = round(mean, 3)
    if cfg.p_mean is None:
        cfg.p_mean = round(-1.2 + math.log(cfg.sigma_data / 0.5), 3)
    return cfg, channels


