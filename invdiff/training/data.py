"""Training data sources: callables ``source(step, batch_size)`` returning ``x0``, ``(x0, cond)`` or a dict
``{"x0", "cond", "pos"}`` (``pos``: the coordinate channels of patches, :class:`PatchSource`).

The batch at step k depends only on k (resumed runs reproduce uninterrupted ones). A source may offer
``source.part(step, batch_size, start, stop)`` (rows ``[start, stop)`` alone; the phantom streams do), otherwise
:func:`batch_part` slices the whole batch. :func:`make_source` builds the source a :class:`TrainConfig` names
(phantom streams of :mod:`invdiff.datasets`, a tensor file, a folder of images); :func:`resolve_config` fills the
preconditioning (``sigma_data``, ``data_shift``, ``p_mean``) from the data.

Patches (PaDIS, Hu et al. 2024): :class:`PatchSource` crops every image of another source at a random position drawn
from the (seed, step) generator, and adds the crop's coordinate channels when positional. Batches are prepared by
:func:`stream_batches`, in the training process or by ``workers`` DataLoader processes: the batch of step k is a
function of (seed, k) alone, so the stream, and a resumed run, are the same for any number of workers.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from .._validate import fail
from .config import FILE_KINDS, TrainConfig


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


class PatchSource:
    """Random ``patch``-sized crops of the images of ``base`` (PaDIS): row i of step k is cropped at an offset
    drawn, per row, from a generator seeded by (seed, k); with ``positional`` the batch carries the crop's
    coordinate channels (:func:`invdiff.priors.networks.coordinate_channels`) as ``pos``. Returns dicts
    ``{"x0", "cond", "pos"}``; crops of 2D images and of volumes alike."""

    stats_images = 64  # images read to estimate the preconditioning (each is a whole base image)

    def __init__(self, base: Callable, patch: int, *, positional: bool = False, seed: int = 0):
        self.base, self.patch, self.positional, self.seed = base, int(patch), bool(positional), int(seed)
        self.channels = getattr(base, "channels", None)

    def offsets(self, step: int, batch_size: int, full) -> torch.Tensor:
        """(batch_size, dims) crop origins of step ``step`` for whole images of spatial size ``full``."""
        if min(full) < self.patch:
            fail("patch_size", f"at most the image size {tuple(full)}", self.patch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 500_000_009)  # not train_step's stream
        return torch.stack([torch.randint(0, n - self.patch + 1, (batch_size,), generator=g) for n in full], 1)

    def __call__(self, step: int, batch_size: int):
        return self.part(step, batch_size, 0, batch_size)

    def part(self, step: int, batch_size: int, start: int, stop: int):
        from ..priors.networks import coordinate_channels

        x0, cond = _split(batch_part(self.base, step, batch_size, start, stop))
        full = tuple(x0.shape[2:])
        offs = self.offsets(step, batch_size, full)[start:stop]
        crop = lambda t: torch.stack([t[(i, slice(None), *(slice(int(o), int(o) + self.patch) for o in offs[i]))]  # noqa: E731
                                      for i in range(len(offs))])
        out = {"x0": crop(x0).contiguous()}
        if cond is not None:
            out["cond"] = crop(cond).contiguous()
        if self.positional:
            out["pos"] = coordinate_channels(full, offs, (self.patch,) * len(full))
        return out


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
    batch = source(step, batch_size)
    if isinstance(batch, dict):
        return {k: v[start:stop] for k, v in batch.items()}
    x0, cond = _split(batch)
    return x0[start:stop] if cond is None else (x0[start:stop], cond[start:stop])


class _StepBatches(torch.utils.data.Dataset):
    """Item k = this rank's rows of the batch of step k (what a DataLoader worker prepares)."""

    def __init__(self, source: Callable, batch_size: int, start: int, stop: int):
        self.source, self.batch_size, self.start, self.stop = source, batch_size, start, stop

    def __getitem__(self, step: int):
        return batch_part(self.source, int(step), self.batch_size, self.start, self.stop)


def _worker_init(_):
    torch.set_num_threads(1)


def stream_batches(source: Callable, first: int, steps: int, batch_size: int, start: int, stop: int,
                   workers: int = 0):
    """The batches of steps ``first .. steps-1`` (rows ``[start, stop)``), in order. ``workers > 0``: prepared by
    that many DataLoader processes (1 torch thread each, two batches ahead each); the same batches either way."""
    if workers <= 0:
        return (batch_part(source, k, batch_size, start, stop) for k in range(first, steps))
    return iter(torch.utils.data.DataLoader(_StepBatches(source, batch_size, start, stop), batch_size=None,
                                            sampler=range(first, steps), num_workers=workers,
                                            worker_init_fn=_worker_init, prefetch_factor=2))


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
    """Data source of a config: a phantom / volume stream, slices streamed from files, or random minibatches of a
    tensor / image folder; wrapped in a :class:`PatchSource` when ``cfg.patch_size`` is set (with
    ``cfg.conditional``: paired (x0, cond) data on top of the images instead)."""

    base = _make_base_source(cfg)
    if cfg.conditional:  # conditional hook
        from . import conditional
        return conditional.make_source(cfg, base)
    if cfg.patch_size:
        return PatchSource(base, cfg.patch_size, positional=cfg.positional, seed=cfg.seed)
    return base


def _make_base_source(cfg: TrainConfig) -> Callable:
    from ..datasets.phantoms import PhantomStream
    from ..datasets.phantoms3d import VolumeStream

    if cfg.data in ("ct", "mri", "ct-anatomy", "mri-anatomy"):
        return PhantomStream(cfg.data, cfg.size)
    if cfg.data == "ct3d":
        return VolumeStream(cfg.data, cfg.size)
    if cfg.data.startswith(FILE_KINDS):
        from .files import file_source

        return file_source(cfg)
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
    if isinstance(batch, dict):
        return batch["x0"], batch.get("cond")
    return batch if isinstance(batch, (tuple, list)) else (batch, None)


def _pos(batch):
    """The coordinate channels of a patch batch (None for whole images)."""
    return batch.get("pos") if isinstance(batch, dict) else None


def estimate_data_stats(source: Callable, n: int | None = None) -> tuple[int, float, float]:
    """(channels, mean, std) of ``n`` training images (batch 0 of size n; default 256, or the source's
    ``stats_images``): the preconditioning's mu and sigma_data."""
    n = n or getattr(source, "stats_images", 256)
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


