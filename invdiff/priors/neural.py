r"""Neural priors: a time-conditioned network with EDM preconditioning, stored as self-describing safetensors.

The denoiser is EDM's preconditioned network (Karras et al. 2022, Eq. 7 and Table 1, "Ours" column)

.. math::
    D_\theta(x, \sigma) = \mu + c_{skip}(\sigma)\,(x-\mu) + c_{out}(\sigma)\,F_\theta\big(c_{in}(\sigma)(x-\mu),\ c_{noise}(\sigma)\big),

    c_{skip} = \frac{\sigma_d^2}{\sigma^2+\sigma_d^2},\quad c_{out} = \frac{\sigma\,\sigma_d}{\sqrt{\sigma^2+\sigma_d^2}},\quad
    c_{in} = \frac{1}{\sqrt{\sigma^2+\sigma_d^2}},\quad c_{noise} = \tfrac14 \ln\sigma,

where :math:`\sigma_d` (``sigma_data``) is the standard deviation of the training images and :math:`\mu`
(``data_shift``) their mean: EDM assumes zero-mean data, and because :math:`E[x_0 + \mu \mid x_0+\mu+\sigma n]`
is :math:`\mu + E[x_0\mid x_0 + \sigma n]` the shift is exact. As :math:`\sigma\to 0`, :math:`c_{skip}\to 1` and
:math:`c_{out}\to 0`, so :math:`D(x,\sigma)\to x`.

File format: a safetensors file whose tensors are the network's ``state_dict`` and whose header
metadata key ``"invdiff"`` holds JSON: ``format``, ``arch`` + ``net_config`` (constructor arguments),
``precond`` (``type``, ``sigma_data``, ``data_shift``), ``channels``, ``spatial_dims``, ``resolution``,
``trained_resolution``, ``patch_size``, ``validated_sizes``, ``pixel_spacing`` (for the size guard; files without
them were trained on whole ``trained_resolution`` images), ``value_range``, ``name`` and free-form ``info``
(training provenance). :meth:`NeuralPrior.load` rebuilds the prior from that header alone; no pickle is involved.

Patch-trained priors (``patch_size`` set; PaDIS, Hu et al. 2024) denoise a whole image in one of two ways,
chosen by :attr:`NeuralPrior.inference` (stored as ``inference`` in the header, the training default "conv"):

- ``"conv"``: the network runs fully convolutionally on the whole image; positional networks get the
  coordinate channels of the whole image (:func:`~invdiff.priors.networks.coordinate_channels`).

Positional networks place the coordinates by :attr:`NeuralPrior.coord_frame` (header ``coord_frame``): ``"image"``
(default) spans the whole image, ``"square"`` the centred square of side min(H, W), so that a non-square image
whose object fills its central square (fastMRI's 2x readout oversampling: 640 x 368 k-space of a 368 x 368 field
of view) gets the coordinates the prior learnt on square images. Square images are the same in both.
- ``"tiled"``: the image is cut into cells of a ``tile`` grid (default ``patch_size``) whose origin is shifted by
  a random offset in ``[0, tile)`` per axis at every call (PaDIS Sec. 3.3: no seam stays fixed); each cell is
  denoised by the tile-sized window that contains it (windows at the border slide inwards, so no padding is
  needed), with that window's coordinate channels, and only the cell is kept. The offsets come from
  :attr:`NeuralPrior.tile_generator` (seeded by :meth:`NeuralPrior.set_inference`), so a run is deterministic
  given its seed. Images smaller than one tile are denoised whole.

Volumes: a prior whose network was built with ``dims=3`` (``net_config["dims"] == 3``) is a native 3D
prior: ``spatial_dims == 3``, it denoises (B, C, D, H, W) volumes, and ``resolution`` (when not None) is a
(D, H, W) triple. Files written before ``spatial_dims`` existed have no such key and are 2D.

>>> import torch
>>> from invdiff.priors.networks import CompactUNet
>>> p = NeuralPrior(CompactUNet(1, base_channels=8, channel_mult=(1, 2), dims=3), sigma_data=0.2, channels=1)
>>> p.spatial_dims, p(torch.zeros(2, 1, 8, 8, 8), 0.1).shape
(3, torch.Size([2, 1, 8, 8, 8]))
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .._validate import check_choice, check_positive, fail
from .base import Prior, as_sigma_tensor, check_sigma
from .networks import build_network

FORMAT = "invdiff-neural-prior/1"
#: network precisions of :meth:`NeuralPrior.set_precision` (autocast dtypes)
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: whole-image inference of patch priors (:meth:`NeuralPrior.set_inference`)
INFERENCE_MODES = ("conv", "tiled")
META_KEY = "invdiff"


def edm_coefficients(sigma: torch.Tensor, sigma_data: float):
    """(c_skip, c_out, c_in, c_noise) of EDM (Karras et al. 2022, Table 1) for a (B,) sigma tensor."""
    s2, d2 = sigma ** 2, sigma_data ** 2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1.0 / (s2 + d2).sqrt()
    c_noise = sigma.clamp_min(1e-20).log() / 4
    return c_skip, c_out, c_in, c_noise


#: where positional networks place their coordinate channels (:attr:`NeuralPrior.coord_frame`)
COORD_FRAMES = ("image", "square")


class NeuralPrior(Prior):
    """A trained network ``F`` wrapped as an invdiff :class:`Prior` with EDM preconditioning.

    Parameters
    ----------
    net : the raw network ``F(x_in, c_noise[, cond])`` (e.g. :class:`~invdiff.priors.networks.CompactUNet`).
    sigma_data, data_shift : data standard deviation and mean used by the preconditioning.
    channels : image channels (1 real, 2 complex as real/imag).
    resolution : spatial size it was trained at ((H, W), or (D, H, W) for a 3D prior), or None when the
        network is fully convolutional and may be applied to any size (``trained_resolution`` keeps the
        training size for reference).
    value_range : range of the training images (documentation and checks).
    arch, net_config : class name and constructor arguments of ``net`` (needed for :meth:`save`).
    info : free-form provenance (training data, steps, ...) saved in the file header.
    spatial_dims : 2 (images) or 3 (volumes); None takes it from the network (``net.dims`` or
        ``net_config["dims"]``, default 2).
    patch_size, validated_sizes, pixel_spacing : size / scale metadata for the size guard
        (:func:`~invdiff.priors.base.check_prior_fits`): None patch size = trained on whole
        ``trained_resolution`` images (the shipped 64x64 phantom priors); sizes it was validated at (default:
        the trained resolution for whole-image priors); mm per pixel, None for synthetic data.
    inference, tile, tile_seed : whole-image inference of a patch prior (module docstring): ``"conv"`` or
        ``"tiled"``, the tile size (default ``patch_size``) and the seed of the tile offsets.
    """

    def __init__(self, net: nn.Module, *, sigma_data: float, data_shift: float = 0.0, channels: int,
                 resolution: tuple[int, int] | None = None, value_range=(0.0, 1.0), name: str | None = None,
                 arch: str | None = None, net_config: dict | None = None, trained_resolution=None,
                 info: dict | None = None, spatial_dims: int | None = None, patch_size=None,
                 validated_sizes=None, pixel_spacing=None, inference: str = "conv", tile=None, tile_seed: int = 0,
                 coord_frame: str = "image"):
        super().__init__()
        check_positive("sigma_data", float(sigma_data))
        check_positive("channels", channels, integer=True)
        net_dims = int(getattr(net, "dims", (net_config or getattr(net, "config", {}) or {}).get("dims", 2)))
        if spatial_dims is None:
            spatial_dims = net_dims
        if spatial_dims not in (2, 3) or spatial_dims != net_dims:
            fail("spatial_dims", f"{net_dims} (the network's number of spatial dimensions)", spatial_dims)
        self.spatial_dims = int(spatial_dims)
        for key, res in (("resolution", resolution), ("trained_resolution", trained_resolution),
                         ("patch_size", patch_size), ("pixel_spacing", pixel_spacing),
                         *(("validated_sizes", v) for v in (validated_sizes or ()))):
            if res is not None and len(tuple(res)) != self.spatial_dims:
                fail(key, f"{self.spatial_dims} sizes ({'D, ' if self.spatial_dims == 3 else ''}H, W) for a "
                          f"{self.spatial_dims}D prior", tuple(res))
        self.net = net
        self.sigma_data = float(sigma_data)
        self.data_shift = float(data_shift)
        self.channels = channels
        self.resolution = tuple(resolution) if resolution is not None else None
        self.trained_resolution = tuple(trained_resolution) if trained_resolution is not None else self.resolution
        self.patch_size = tuple(int(s) for s in patch_size) if patch_size is not None else None
        self.validated_sizes = (tuple(tuple(int(s) for s in v) for v in validated_sizes)
                                if validated_sizes else None)
        self.pixel_spacing = tuple(float(s) for s in pixel_spacing) if pixel_spacing is not None else None
        self.value_range = tuple(value_range) if value_range is not None else None
        self.arch = arch or type(net).__name__
        self.net_config = dict(net_config if net_config is not None else getattr(net, "config", {}))
        self.cond_channels = int(self.net_config.get("cond_channels", 0))
        self.pos_channels = int(self.net_config.get("pos_channels", 0))
        self.info = dict(info or {})
        check_choice("coord_frame", coord_frame, COORD_FRAMES)
        self.coord_frame = coord_frame
        if name:
            self._name = name
        self.set_inference(inference, tile=tile, seed=tile_seed)

    # -- whole-image inference of patch priors --------------------------------------------------------
    def set_inference(self, mode: str = "conv", *, tile=None, seed: int = 0) -> "NeuralPrior":
        """Choose how a whole image is denoised (module docstring): ``"conv"`` or ``"tiled"`` with ``tile``-sized
        windows (default ``patch_size``, else ``trained_resolution``) and tile offsets drawn from a generator seeded
        with ``seed``. Returns the prior."""
        check_choice("inference", mode, INFERENCE_MODES)
        if tile is None:
            tile = self.patch_size or self.trained_resolution
        if mode == "tiled":
            if tile is None:
                fail("tile", "a tile size (the prior has no patch_size or trained_resolution)", tile)
            tile = (int(tile),) * self.spatial_dims if isinstance(tile, int) else tuple(int(t) for t in tile)
            if len(tile) != self.spatial_dims or min(tile) < 1:
                fail("tile", f"{self.spatial_dims} positive sizes", tile)
        self.inference = mode
        self.tile = tuple(tile) if tile is not None else None
        self.tile_seed = int(seed)
        self.tile_generator = torch.Generator().manual_seed(self.tile_seed)
        return self

    def _tiled(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """PaDIS-style tiled denoising with a random grid offset per call (module docstring)."""
        from .networks import coordinate_channels

        spatial = tuple(x.shape[2:])
        tile = self.tile
        # per axis: (cell start, cell stop, window start) of the shifted grid; window = the tile that holds the cell
        plans = []
        for n, t in zip(spatial, tile):
            shift = int(torch.randint(0, t, (1,), generator=self.tile_generator))
            edges = sorted({0, n, *range(shift, n, t)})
            plans.append([(lo, hi, min(lo, n - t)) for lo, hi in zip(edges[:-1], edges[1:])])
        windows = [()]
        for plan in plans:
            windows = [w + (c,) for w in windows for c in plan]
        B = x.shape[0]
        out = torch.empty_like(x)
        chunk = max(1, 64 // B)
        for k in range(0, len(windows), chunk):
            group = windows[k:k + chunk]
            sl = [tuple(slice(c[2], c[2] + t) for c, t in zip(w, tile)) for w in group]
            xs = torch.cat([x[(slice(None), slice(None), *s)] for s in sl])
            cs = None if cond is None else torch.cat([cond[(slice(None), slice(None), *s)] for s in sl])
            pos = None
            if self.pos_channels:
                offs = torch.tensor([[c[2] for c in w] for w in group]).repeat_interleave(B, 0)
                pos = coordinate_channels(spatial, offs, tile, dtype=x.dtype, device=x.device,
                                          frame=self._frame(spatial))
            d = self.precond(xs, sigma.repeat(len(group)), cs, pos)
            for j, w in enumerate(group):
                keep = tuple(slice(c[0] - c[2], c[1] - c[2]) for c in w)
                dst = tuple(slice(c[0], c[1]) for c in w)
                out[(slice(None), slice(None), *dst)] = d[j * B:(j + 1) * B][(slice(None), slice(None), *keep)]
        return out

    # -- the denoiser ------------------------------------------------------------------------------
    def denoise(self, x: torch.Tensor, sigma, cond: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        check_sigma(sigma, x)   # negative / NaN sigma, NaN input: one clear error (no GPU sync)
        sig = as_sigma_tensor(sigma, x)
        if self.inference == "tiled" and all(n >= t for n, t in zip(x.shape[2:], self.tile)):
            return self._tiled(x, sig, cond)
        pos = None
        spatial = tuple(x.shape[2:])
        if self.pos_channels and self._frame(spatial) != spatial:
            from .networks import coordinate_channels

            pos = coordinate_channels(spatial, dtype=x.dtype, device=x.device, frame=self._frame(spatial))
        return self.precond(x, sig, cond, pos)

    def _frame(self, spatial: tuple) -> tuple:
        """The frame the coordinate channels span for an image of size ``spatial`` (:attr:`coord_frame`)."""
        return (min(spatial),) * len(spatial) if self.coord_frame == "square" else tuple(spatial)

    #: network precision: "fp32" (default), or autocast to "bf16" / "fp16" for the network only (the EDM
    #: preconditioning, skip connection and everything outside the prior stay in the input's dtype); set with
    #: :meth:`set_precision` or ``invdiff.priors.load(name, precision=...)``. Quality: benchmarks/results/precision.md
    precision: str = "fp32"

    def set_precision(self, precision: str) -> "NeuralPrior":
        """Run the network in ``precision`` ("fp32" | "bf16" | "fp16") from now on; returns self.

        >>> import invdiff
        >>> invdiff.priors.load("ct-phantom-64").set_precision("bf16").precision
        'bf16'
        """
        check_choice("precision", precision, tuple(PRECISIONS))
        self.precision = precision
        return self

    def precond(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None,
                pos: torch.Tensor | None = None) -> torch.Tensor:
        """EDM Eq. 7 without input checks (used by training); ``sigma`` is a (B,) tensor; ``pos`` the coordinate
        channels of ``x`` within its whole image (positional networks; default: ``x`` is the whole image)."""
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma.to(x.dtype), self.sigma_data)
        bc = lambda c: c.reshape(-1, *([1] * (x.dim() - 1)))  # noqa: E731
        xc = x - self.data_shift
        args = (bc(c_in) * xc, c_noise) if cond is None else (bc(c_in) * xc, c_noise, cond)
        if pos is not None:
            args = (bc(c_in) * xc, c_noise, cond, pos)
        if self.precision == "fp32":
            f = self.net(*args)
        else:
            with torch.autocast(device_type=x.device.type, dtype=PRECISIONS[self.precision]):
                f = self.net(*args)
        return self.data_shift + bc(c_skip) * xc + bc(c_out) * f.to(x.dtype)

    # -- metadata and files ------------------------------------------------------------------------
    def metadata(self) -> dict:
        return {
            "format": FORMAT, "name": self.name, "arch": self.arch, "net_config": self.net_config,
            "precond": {"type": "edm", "sigma_data": self.sigma_data, "data_shift": self.data_shift},
            "channels": self.channels, "complex": self.channels == 2, "spatial_dims": self.spatial_dims,
            "resolution": list(self.resolution) if self.resolution else None,
            "trained_resolution": list(self.trained_resolution) if self.trained_resolution else None,
            "patch_size": list(self.patch_size) if self.patch_size else None,
            "validated_sizes": [list(v) for v in self.validated_sizes] if self.validated_sizes else None,
            "pixel_spacing": list(self.pixel_spacing) if self.pixel_spacing else None,
            "inference": self.inference, "tile": list(self.tile) if self.tile else None, "tile_seed": self.tile_seed,
            "coord_frame": self.coord_frame,
            "value_range": list(self.value_range) if self.value_range else None,
            "info": self.info,
        }

    def save(self, path, *, dtype: torch.dtype = torch.float32) -> Path:
        """Write the network weights (cast to ``dtype``) and the JSON header, atomically (tmp + rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
                   for k, v in self.net.state_dict().items()}
        tmp = path.with_name(path.name + ".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(self.metadata())})
        os.chmod(tmp, 0o644)  # safetensors creates files readable by the owner only
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path, *, device="cpu") -> "NeuralPrior":
        """Rebuild a prior from an invdiff safetensors file. Any defect gives one ``ValueError`` naming the file."""
        meta, tensors = read_checkpoint(path)
        return cls.from_state(meta, tensors, device=device, source=str(path))

    @classmethod
    def from_state(cls, meta: dict, tensors: dict, *, device="cpu", source: str = "state") -> "NeuralPrior":
        def bad(why):
            fail("path", "a valid invdiff neural-prior checkpoint", f"{source!r}: {why}")

        for key in ("arch", "net_config", "precond", "channels"):
            if key not in meta:
                bad(f"header is missing {key!r}")
        pre = meta["precond"]
        if not isinstance(pre, dict) or pre.get("type") != "edm" or "sigma_data" not in pre:
            bad(f"unsupported preconditioning {pre!r} (expected type 'edm' with sigma_data)")
        try:
            net = build_network(meta["arch"], meta["net_config"])
        except (ValueError, TypeError) as e:
            bad(f"cannot rebuild the network ({e})")
        expected = net.state_dict()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            bad(f"weights do not match the architecture: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        wrong = [k for k in expected if tuple(expected[k].shape) != tuple(tensors[k].shape)]
        if wrong:
            bad(f"tensor shapes do not match the architecture for {wrong[:5]}")
        net.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()}, strict=True)
        try:
            prior = cls(net, sigma_data=pre["sigma_data"], data_shift=pre.get("data_shift", 0.0),
                        channels=int(meta["channels"]), resolution=meta.get("resolution"),
                        value_range=meta.get("value_range"), name=meta.get("name"), arch=meta["arch"],
                        net_config=meta["net_config"], trained_resolution=meta.get("trained_resolution"),
                        info=meta.get("info"), spatial_dims=meta.get("spatial_dims"),
                        patch_size=meta.get("patch_size"), validated_sizes=meta.get("validated_sizes"),
                        pixel_spacing=meta.get("pixel_spacing"), inference=meta.get("inference", "conv"),
                        tile=meta.get("tile") if meta.get("inference") == "tiled" else None,
                        tile_seed=int(meta.get("tile_seed", 0)), coord_frame=meta.get("coord_frame", "image"))
        except (ValueError, TypeError) as e:
            bad(f"inconsistent header ({e})")
        return prior.to(device).eval()


def read_checkpoint(path) -> tuple[dict, dict]:
    """Read (header JSON, tensors) from an invdiff safetensors file, with one clear error for any defect."""
    from ..io_utils import read_safetensors

    p = Path(path)
    if not p.is_file():
        fail("path", "an existing invdiff safetensors checkpoint file", str(path))
    try:
        header, tensors = read_safetensors(p)
    except Exception as e:  # safetensors raises SafetensorError / OSError on corrupt or truncated files
        fail("path", "a readable safetensors file", f"{str(path)!r}: corrupt or truncated ({type(e).__name__}: {e})")
    if META_KEY not in header:
        fail("path", f"a safetensors file with invdiff metadata (header key {META_KEY!r})",
             f"{str(path)!r} (header keys: {sorted(header)})")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as e:
        fail("path", "valid JSON in the invdiff header", f"{str(path)!r}: {e}")
    if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith("invdiff-neural-prior/"):
        fail("path", f"an invdiff neural-prior header (format {FORMAT!r})", f"{str(path)!r}: format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    return meta, tensors


def is_invdiff_checkpoint(path) -> bool:
    """True if ``path`` is a safetensors file carrying an invdiff header (cheap: reads the header only)."""
    p = Path(path)
    if not p.is_file() or p.suffix != ".safetensors":
        return False
    try:
        with open(p, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or n > 100_000_000:
                return False
            head = json.loads(fh.read(n))
        return META_KEY in head.get("__metadata__", {})
    except (OSError, ValueError):
        return False


__all__ = ["NeuralPrior", "edm_coefficients", "read_checkpoint", "is_invdiff_checkpoint", "FORMAT"]
